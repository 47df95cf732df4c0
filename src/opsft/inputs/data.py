"""One loader for every dataset source, into TRL's prompt/completion shape.

Sources:
  - a file: .jsonl, .json (a list of objects, or {"data": [...]}) , .parquet, .csv;
  - ``gym:<task>?size=200&seed=0&<task option>=...``: a reasoning-gym task, its answer and scorer kept;
  - anything else: a Hugging Face dataset name, ``name?config=main&split=train`` (needs the hub).

Shapes, as in TRL: ``prompt``/``completion`` (strings, or message lists), ``messages`` (the last
message, an assistant turn, is the completion; the rest is the prompt), or any two columns mapped
with ``prompt_field``/``completion_field`` (e.g. question/solution), which become a user and an
assistant message so the tokenizer's chat template renders them.

Every bad row raises a DataError naming the source, the row (1-based; for JSONL also the line where
blank lines make it differ) and the field, unless ``skip_invalid`` is set: then it is counted by reason
in ``LoadedData.skipped``. The shape is taken from the first row that has one, so a bad first row is
skipped like any other.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml

from ..runtime.errors import DataError, OpsftError

Messages = list[dict[str, Any]]


@dataclass
class Example:
    """One training example in TRL's prompt/completion shape, with where it came from."""

    prompt: str | Messages
    completion: str | Messages
    row: dict[str, Any]  # the source record, written back out with whatever we add to it
    index: int  # 0-based position among the source's records (its row number is index + 1)
    answer: str | None = None  # the reference final answer, when known
    verify: Callable[[str], float] | None = field(default=None, repr=False)  # the task's own scorer (gym)
    line: int | None = None  # the line it stands on, for JSONL files

    def error(self, message: str, *, source: str, field: str | None = None, reason: str = "invalid") -> DataError:
        """A DataError about this example, naming its row (and line)."""
        return DataError(message, source=source, row=self.index + 1, line=self.line, field=field, reason=reason)


def completion_like(example: Example, text: str) -> str | Messages:
    """`text` as a completion in the shape of the example's own (text, or one assistant message)."""
    return text if isinstance(example.completion, str) else [{"role": "assistant", "content": text}]


@dataclass
class LoadedData:
    source: str
    shape: str  # "prompt_completion", "messages" or "mapped"
    examples: list[Example]
    skipped: list[DataError] = field(default_factory=list)  # rows skipped, each with its reason (skip_invalid)


def load_examples(
    source: str | Iterable[dict],
    *,
    prompt_field: str | None = None,
    completion_field: str | None = None,
    messages_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
    skip_invalid: bool = False,
) -> LoadedData:
    """Load `source` (see module doc; or rows in memory: a datasets.Dataset or a list of dicts) into Examples;
    `limit` keeps the first rows read."""
    if (prompt_field is None) != (completion_field is None):
        raise OpsftError("--prompt-field and --completion-field go together: give both or neither")
    verifiers: dict[int, Callable[[str], float]] = {}
    if not isinstance(source, str):
        records, source = ((None, dict(row)) for row in source), "the dataset"
    elif source.startswith("gym:"):
        records = _gym_records(source, verifiers)
        prompt_field, completion_field = prompt_field or "question", completion_field or "solution"
        answer_field = answer_field or "answer"
    else:
        records = _read_records(source)

    loaded = LoadedData(source=source, shape="", examples=[])
    for index, at, record in _rows(records, source, limit, loaded.skipped if skip_invalid else None):
        try:
            shape = loaded.shape or _detect_shape(record, source, at, prompt_field, messages_field)
            prompt, completion = _prompt_and_completion(
                record, shape, source, at, prompt_field, completion_field, messages_field
            )
            answer = None
            if answer_field is not None:
                answer = _require(record, answer_field, source, at)
                answer = None if answer is None else str(answer)
        except DataError as error:
            if not skip_invalid:
                raise
            loaded.skipped.append(error)
            continue
        loaded.shape = shape
        loaded.examples.append(Example(prompt, completion, record, index, answer, verifiers.get(index), at["line"]))
    if not loaded.examples and not loaded.skipped:
        raise OpsftError(f"{source}: no rows")
    return loaded


# ---- reading raw records -------------------------------------------------------------------------

def _read_records(source: str) -> Iterator[tuple[int | None, Any]]:
    """(line number for JSONL files else None, record) pairs; a malformed JSONL line is yielded as a
    DataError-raising record, so that it is skipped and counted like any other bad row."""
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise OpsftError(f"{source}: is a directory, not a data file")
    if path.exists():
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            data = _load_json(path)
            data = data.get("data", data) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise OpsftError(f"{source}: expected a list of objects (or {{'data': [...]}})")
            return ((None, record) for record in data)
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except (pa.ArrowException, OSError) as e:
                raise OpsftError(f"{source}: not a readable Parquet file ({_first_line(e)})") from None
            return ((None, record) for record in table.to_pylist())
        if suffix == ".csv":
            try:
                rows = list(csv.DictReader(io.StringIO(_utf8_text(path), newline="")))
            except csv.Error as e:
                raise OpsftError(f"{source}: malformed CSV ({e})") from None
            return ((None, record) for record in rows)
        raise OpsftError(f"{source}: unsupported file type '{suffix}' (use .jsonl, .json, .parquet or .csv)")
    if suffix in (".jsonl", ".json", ".parquet", ".csv"):
        raise OpsftError(f"{source}: no such file")
    return _hub_records(source)


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield line_number, _Raising(DataError(_not_utf8(e, f"at column {e.start + 1}"), source=str(path),
                                                      line=line_number, reason="not_utf8"))
                continue
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as e:
                yield line_number, _Raising(DataError(f"malformed JSON ({e.msg} at column {e.colno})",
                                                      source=str(path), line=line_number, reason="malformed_json"))


def _not_utf8(error: UnicodeDecodeError, where: str) -> str:
    return f"is not UTF-8 text (byte 0x{error.object[error.start]:02x} {where}); re-save the file as UTF-8"


def _utf8_text(path: Path) -> str:
    """A whole file's text; bytes that are not UTF-8 are an error naming the line they are on."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise OpsftError(f"{path}: {_not_utf8(e, f'on line {line}')}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _rows(records, source: str, limit: int | None, skipped: list | None) -> Iterator[tuple[int, dict, dict]]:
    """(index, where {row, line}, record) of the first `limit` records that are JSON objects; a malformed or
    non-object row raises its DataError, or with `skipped` (skip_invalid) is counted there."""
    for index, (line, record) in enumerate(records):
        if limit is not None and index >= limit:
            break
        at = {"row": index + 1, "line": line}
        error = record.error if isinstance(record, _Raising) else None
        if error is not None:
            error = DataError(error.message, source=source, field=error.field, reason=error.reason, **at)
        elif not isinstance(record, dict):
            error = DataError("is not an object", source=source, reason="not_an_object", **at)
        if error is None:
            yield index, at, record
        elif skipped is None:
            raise error
        else:
            skipped.append(error)


class _Raising:
    """A row that raises its error when looked at, so skipping and counting stay in one place."""

    def __init__(self, error: DataError):
        self.error = error


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_utf8_text(path))
    except json.JSONDecodeError as e:
        raise OpsftError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _split_query(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, query = spec.partition("?")
    return name, {k: yaml.safe_load(v) for k, v in parse_qsl(query, keep_blank_values=True)}


def _hub_records(source: str) -> Iterator[tuple[int, Any]]:
    import datasets

    name, params = _split_query(source.removeprefix("hf:"))
    config, split = params.pop("config", None), params.pop("split", "train")
    if params:
        raise OpsftError(f"{source}: unknown dataset options {sorted(params)} (use config=, split=)")
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub raises many types: offline, not found, gated...
        raise OpsftError(
            f"{source}: not a file and could not be loaded from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return ((None, record) for record in dataset)


def _gym_records(source: str, verifiers: dict[int, Callable[[str], float]]) -> Iterator[tuple[int, Any]]:
    """reasoning-gym rows as {question, solution, answer, task, metadata}; the solution is the task's
    worked rationale when it has one (e.g. gsm_symbolic's, ending '#### N'), else the bare answer."""
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    task, params = _split_query(source.removeprefix("gym:"))
    if task not in DATASETS:
        close = difflib.get_close_matches(task, DATASETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise OpsftError(f"{source}: unknown reasoning-gym task '{task}'{hint}")
    params.setdefault("size", 100)
    params.setdefault("seed", 0)
    try:
        dataset = reasoning_gym.create_dataset(task, **params)
    except (TypeError, ValueError, AssertionError) as e:
        raise OpsftError(f"{source}: bad options for task '{task}': {e}") from None
    for index, entry in enumerate(dataset):
        verifiers[index] = functools.partial(_score_gym_answer, dataset, entry)
        metadata = entry.get("metadata", {})
        yield None, {
            "question": entry["question"],
            "solution": metadata.get("answer_cot") or entry["answer"],
            "answer": entry["answer"],
            "task": task,
            "metadata": json.loads(json.dumps(metadata, default=str)),
        }


def _score_gym_answer(dataset, entry, answer: str) -> float:
    return float(dataset.score_answer(answer, entry))


# ---- shapes and validation ------------------------------------------------------------------------

def _detect_shape(record: dict, source: str, at: dict, prompt_field: str | None, messages_field: str | None) -> str:
    if prompt_field is not None:
        return "mapped"
    if messages_field is not None or "messages" in record:
        return "messages"
    if "prompt" in record or "completion" in record:  # the other one missing is this row's error
        return "prompt_completion"
    raise DataError(
        f"has no 'prompt'/'completion' or 'messages' columns (found {sorted(record)}); "
        f"map yours with --prompt-field and --completion-field (e.g. question / solution)",
        source=source, reason="unknown_columns", **at)


def _prompt_and_completion(record, shape, source, at, prompt_field, completion_field, messages_field):
    if shape == "messages":
        name = messages_field or "messages"
        messages = _messages(_require(record, name, source, at), source, at, name)
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise DataError("needs at least one prompt message and a final assistant message",
                            source=source, **at, field=name, reason="no_final_assistant_message")
        prompt, completion = messages[:-1], messages[-1:]
        _require_text(completion[0]["content"], source, at, name, "completion")
        return prompt, completion

    prompt_name = prompt_field or "prompt"
    completion_name = completion_field or "completion"
    prompt = _require(record, prompt_name, source, at)
    completion = _require(record, completion_name, source, at)
    for name, value in ((prompt_name, prompt), (completion_name, completion)):
        if not isinstance(value, (str, list)):
            raise DataError(f"must be a string or a list of messages, got {type(value).__name__}", source=source,
                            **at, field=name, reason="invalid_type")
    if shape == "mapped":  # a question/solution pair: a user turn and an assistant turn
        prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        completion = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    if isinstance(prompt, str) != isinstance(completion, str):
        raise DataError("prompt and completion must both be strings or both be message lists",
                        source=source, **at, field=completion_name, reason="mixed_shapes")
    if isinstance(prompt, str):
        _require_text(prompt, source, at, prompt_name, "prompt")
        _require_text(completion, source, at, completion_name, "completion")
        return prompt, completion
    prompt = _messages(prompt, source, at, prompt_name)
    completion = _messages(completion, source, at, completion_name)
    if not prompt:
        raise DataError("is empty", source=source, **at, field=prompt_name, reason="empty_prompt")
    _require_text("".join(m["content"] for m in completion), source, at, completion_name, "completion")
    return prompt, completion


def _require(record: dict, name: str, source: str, at: dict) -> Any:
    if name not in record or record[name] is None:
        raise DataError("is missing", source=source, **at, field=name, reason="missing_field")
    return record[name]


def _require_text(value: Any, source: str, at: dict, name: str, role: str) -> None:
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {type(value).__name__}", source=source, **at, field=name,
                        reason="invalid_type")
    if not value.strip():
        raise DataError(f"the {role} is empty", source=source, **at, field=name, reason=f"empty_{role}")


def _messages(value: Any, source: str, at: dict, name: str) -> Messages:
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )
    if not ok:
        raise DataError("must be a list of {'role': str, 'content': str} messages", source=source, **at,
                        field=name, reason="invalid_messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def load_preferences(source: str, *, limit: int | None = None, skip_invalid: bool = False
                     ) -> tuple[list[dict[str, Any]], list[DataError]]:
    """Rows of TRL's preference shape {prompt, chosen, rejected} (all text, or a message-list prompt with
    assistant-message answers) plus their 1-based `row` (and JSONL `line`) in the source, checked row by row
    like `load_examples`."""
    rows, skipped = [], []
    for _, at, record in _rows(_read_records(source), source, limit, skipped if skip_invalid else None):
        try:
            prompt = _require(record, "prompt", source, at)
            answers = {name: _require(record, name, source, at) for name in ("chosen", "rejected")}
            if isinstance(prompt, str):
                _require_text(prompt, source, at, "prompt", "prompt")
                for name, value in answers.items():
                    _require_text(value, source, at, name, name)
            else:
                prompt = _messages(prompt, source, at, "prompt")
                for name, value in answers.items():
                    answers[name] = _messages(value, source, at, name)
                    _require_text("".join(m["content"] for m in answers[name]), source, at, name, name)
        except DataError as error:
            if not skip_invalid:
                raise
            skipped.append(error)
            continue
        rows.append({"prompt": prompt, **answers, **at})
    if not rows and not skipped:
        raise OpsftError(f"{source}: no rows")
    return rows, skipped
