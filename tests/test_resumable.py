from __future__ import annotations

import pytest

from opsft.errors import OpsftError
from opsft.resumable import ResultLog


def test_log_reopens_with_its_records_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    log = ResultLog(path, {"a": 1})
    log.append([{"index": 3, "v": 0.5}, {"index": 1, "v": 0.25}])
    with path.open("a") as f:
        f.write('{"index": 7, "v":')  # killed mid-write
    again = ResultLog(path, {"a": 1})
    assert again.done() == {1, 3}
    assert [r["index"] for r in again.records()] == [1, 3]
    again.append([{"index": 7, "v": 1.0}])
    assert [r["index"] for r in ResultLog(path, {"a": 1}).records()] == [1, 3, 7]


def test_log_with_other_settings_is_refused_unless_overwritten(tmp_path):
    path = tmp_path / "progress.jsonl"
    ResultLog(path, {"temperature": 1.0}).append([{"index": 0}])
    with pytest.raises(OpsftError, match=r"temperature: 1.0 -> 0.5.*--overwrite"):
        ResultLog(path, {"temperature": 0.5})
    assert ResultLog(path, {"temperature": 0.5}, overwrite=True).done() == set()
