"""User-facing errors: one line that says what went wrong and where (file, row, field)."""

from __future__ import annotations

import json


class OpsftError(Exception):
    """An error in what the user asked for or handed us (not a bug). The CLI prints it on one line."""


class DataError(OpsftError):
    """A problem with one row of a dataset.

    `str(error)` reads ``data.jsonl: row 17: field 'completion': is empty``, or, where the file's line is
    not the row's number (blank lines in a JSONL file), ``data.jsonl: line 19 (row 17): ...``. `reason` is a
    short, stable key (``empty_completion``) used to count rows skipped for the same reason.
    """

    def __init__(self, message: str, *, source: str, row: int | None = None, line: int | None = None,
                 field: str | None = None, reason: str = "invalid"):
        self.message, self.source, self.row, self.line = message, source, row, line
        self.field, self.reason = field, reason
        where = [source]
        if line is not None and line != row:
            where.append(f"line {line}" + (f" (row {row})" if row is not None else ""))
        elif row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join(where + [message]))

    def record(self) -> dict:
        """The skipped row as written to skipped.jsonl."""
        return {"row": self.row, "line": self.line, "field": self.field, "reason": self.reason, "error": str(self)}


def write_skipped(path, skipped: list[DataError]) -> None:
    """skipped.jsonl: one line per row left out, with its row, line, field, reason and message."""
    with open(path, "w") as f:
        f.writelines(json.dumps(error.record()) + "\n" for error in skipped)


def nothing_left(source: str, what: str, skipped: list[DataError]) -> OpsftError:
    """The error for a job whose every row was skipped: how many, and why."""
    reasons = {}
    for error in skipped:
        reasons[error.reason] = reasons.get(error.reason, 0) + 1
    return OpsftError(f"{source}: no {what} ({len(skipped)} skipped: {reasons})")
