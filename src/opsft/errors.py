"""User-facing errors: one line that says what went wrong and where (file, row, field)."""

from __future__ import annotations


class OpsftError(Exception):
    """An error in what the user asked for or handed us (not a bug). The CLI prints it on one line."""


class DataError(OpsftError):
    """A problem with one row of a dataset.

    `str(error)` reads ``data.jsonl: row 17: field 'completion': is empty``. `reason` is a short,
    stable key (``empty_completion``) used to count rows skipped for the same reason.
    """

    def __init__(self, message: str, *, source: str, row: int | None = None, field: str | None = None,
                 reason: str = "invalid"):
        self.message, self.source, self.row, self.field, self.reason = message, source, row, field, reason
        where = [source]
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join(where + [message]))
