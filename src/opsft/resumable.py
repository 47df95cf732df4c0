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
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"settings": self.settings}) + "\n")

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
                if item.get("settings") != self.settings:
                    raise OpsftError(
                        f"{self.path} holds a run with other settings "
                        f"({settings_diff(item.get('settings'), self.settings)}); "
                        f"use another output directory or --overwrite")
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


def settings_diff(old: Any, new: dict) -> str:
    """'key: old -> new, ...' for the settings that differ."""
    if not isinstance(old, dict):
        return "unreadable"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def read_records(path: str | Path, settings: dict[str, Any]) -> list[dict]:
    """The complete records of a log that another process may still be writing: read-only, a torn
    last line is skipped, not cut; a log with other settings is refused."""
    lines = Path(path).read_bytes().split(b"\n")[:-1]  # the piece after the last newline may be torn
    if not lines or json.loads(lines[0]).get("settings") != json.loads(json.dumps(settings)):
        raise OpsftError(f"{path} holds a run with other settings; use another output directory or --overwrite")
    return [json.loads(line) for line in lines[1:]]
