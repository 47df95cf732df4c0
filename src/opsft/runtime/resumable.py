"""Append-only result logs, so a long job that is killed resumes without losing or repeating work.

The log is JSONL: a header line with the job's settings, then one line per finished item, keyed by
"index". Each batch is flushed and fsync'ed before the job moves on; a torn last line (the job died
while writing) is cut off on reopening. A log written with other settings is refused, not mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import OpsftError


class ResultLog:
    def __init__(self, path: str | Path, settings: dict[str, Any], *, overwrite: bool = False):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # normalised as it will read back
        self._records: dict[int, dict] = {}
        if self.path.exists() and overwrite:
            self.path.unlink()
        if self.path.exists():
            self._reopen()
        else:  # written aside and moved in, so that another process never reads a half-written header
            self.path.parent.mkdir(parents=True, exist_ok=True)
            aside = self.path.with_name(self.path.name + ".new")
            aside.write_text(json.dumps({"settings": self.settings}) + "\n")
            os.replace(aside, self.path)

    def _reopen(self) -> None:
        good_bytes, lines = 0, self.path.read_bytes().split(b"\n")
        for number, line in enumerate(lines):
            complete = number < len(lines) - 1  # the last piece has no newline after it
            try:
                item = json.loads(line) if complete else None
            except json.JSONDecodeError:
                item = None
            if item is None:
                break
            if number == 0:
                refuse_other_settings(self.path, item.get("settings"), self.settings)
            else:
                self._records[item["index"]] = item
            good_bytes += len(line) + 1
        if good_bytes == 0:
            raise OpsftError(f"{self.path} is not a result log; use another output directory or --overwrite")
        with self.path.open("r+b") as f:  # drop a torn last line
            f.truncate(good_bytes)

    def done(self) -> set[int]:
        return set(self._records)

    def records(self) -> list[dict]:
        return [self._records[i] for i in sorted(self._records)]

    def append(self, records: list[dict]) -> None:
        with self.path.open("a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for record in records:
            self._records[record["index"]] = record


def refuse_other_settings(path: str | Path, old: Any, new: dict) -> None:
    """A log written with settings `old` is not continued under `new` (both as JSON reads them back)."""
    if old != new:
        raise OpsftError(f"{path} holds a run with other settings ({settings_diff(old, new)}); "
                         f"use another output directory or --overwrite")


def settings_diff(old: Any, new: dict) -> str:
    """'key: old -> new, ...' for the settings that differ."""
    if not isinstance(old, dict):
        return "unreadable"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def read_records(path: str | Path, settings: dict[str, Any]) -> list[dict]:
    """The complete records of a log that another process may still be writing: read-only, a torn
    last line is skipped, not cut (a log with no complete line has no records yet); a log with other settings
    is refused."""
    lines = Path(path).read_bytes().split(b"\n")[:-1]  # the piece after the last newline may be torn
    if not lines:
        return []
    refuse_other_settings(path, json.loads(lines[0]).get("settings"), json.loads(json.dumps(settings)))
    return [json.loads(line) for line in lines[1:]]


class ShardedLog:
    """The result log of a job that `accelerate launch` may spread over processes. Process r of w takes the items
    with index % w == r and logs them to its own file (`<name>.jsonl` in one process, `<name>-r-of-w.jsonl` among
    w); every process counts the records of every log of that name in the directory as done, so a rerun resumes
    with any number of processes; the main process merges them by index."""

    def __init__(self, directory: str | Path, settings: dict[str, Any], *, overwrite: bool = False,
                 name: str = "progress"):
        from .processes import state

        self.state = state()
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.directory, self.settings, self.name = Path(directory), settings, name
        if self.state.is_main_process:
            self.directory.mkdir(parents=True, exist_ok=True)
            if overwrite:
                for path in self._paths():
                    path.unlink()
        self.state.wait_for_everyone()
        own = f"{name}.jsonl" if self.world == 1 else f"{name}-{self.rank}-of-{self.world}.jsonl"
        self.own = self.directory / own
        self.others = {r["index"] for path in self._paths() if path != self.own
                       for r in read_records(path, settings)}
        self.log = ResultLog(self.own, settings)

    def _paths(self) -> list[Path]:
        return sorted(p for p in self.directory.glob(f"{self.name}*.jsonl")
                      if p.stem == self.name or p.stem.startswith(f"{self.name}-"))

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    def done(self) -> set[int]:
        return self.others | self.log.done()

    def mine(self, items: list, index=lambda item: item.index) -> list:
        """The items this process is to do: its share, less what any log already holds."""
        done = self.done()
        return [item for item in items if index(item) % self.world == self.rank and index(item) not in done]

    def append(self, records: list[dict]) -> None:
        self.log.append(records)

    def merged(self, *, on_every_process: bool = False) -> list[dict] | None:
        """Every process's records in index order, once all have finished: on the main process only (None
        elsewhere), or on every process."""
        self.state.wait_for_everyone()
        if not (self.state.is_main_process or on_every_process):
            return None
        merged: dict[int, dict] = {}
        for path in self._paths():
            for record in (self.log.records() if path == self.own else read_records(path, self.settings)):
                merged.setdefault(record["index"], record)
        return [merged[i] for i in sorted(merged)]


class MemoryLog:
    """A ShardedLog's interface kept in memory, for the Python API's functions: one process does every item and
    nothing is written (nothing to resume either)."""

    world, rank, is_main_process = 1, 0, True

    def __init__(self):
        self._records: dict[int, dict] = {}

    def done(self) -> set[int]:
        return set(self._records)

    def mine(self, items: list, index=lambda item: item.index) -> list:
        return [item for item in items if index(item) not in self._records]

    def append(self, records: list[dict]) -> None:
        self._records.update((record["index"], record) for record in records)

    def merged(self, *, on_every_process: bool = False) -> list[dict]:
        return [self._records[i] for i in sorted(self._records)]
