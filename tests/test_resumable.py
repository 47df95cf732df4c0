from __future__ import annotations

import pytest

from opsft.runtime.errors import OpsftError
from opsft.runtime.resumable import MemoryLog, ResultLog, ShardedLog, read_records


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


def test_another_process_reads_a_log_being_created_as_empty_and_one_of_other_settings_as_refused(tmp_path):
    """ShardedLog reads the other processes' logs while they may be creating theirs (a race seen in CI: an empty
    file was taken for a log of other settings). A new log's header is moved in whole; a log with no complete line
    yet has no records; a complete header with other settings is still refused, naming the difference."""
    path = tmp_path / "progress-0-of-2.jsonl"
    for partial in ("", '{"settings": {"temper'):
        path.write_text(partial)
        assert read_records(path, {"temperature": 1.0}) == []
    path.unlink()
    ResultLog(path, {"temperature": 1.0}).append([{"index": 0}])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # nothing left aside
    assert read_records(path, {"temperature": 1.0}) == [{"index": 0}]
    with pytest.raises(OpsftError, match=r"temperature: 1.0 -> 0.5"):
        read_records(path, {"temperature": 0.5})


def test_the_memory_log_does_what_a_sharded_log_does_in_one_process(tmp_path):
    """The Python API's functions run the commands' loops on a MemoryLog: the same items to do, the same merge."""
    items = [7, 3, 5, 1]
    logs = [MemoryLog(), ShardedLog(tmp_path, {"a": 1})]
    for log in logs:
        assert log.mine(items, index=lambda i: i) == items
        log.append([{"index": 5, "x": "five"}, {"index": 1, "x": "one"}])
        log.append([{"index": 5, "x": "five again"}])  # a later record of an index replaces the earlier one
    mem, sharded = logs
    assert mem.mine(items, index=lambda i: i) == sharded.mine(items, index=lambda i: i) == [7, 3]
    assert mem.merged() == sharded.merged() == [{"index": 1, "x": "one"}, {"index": 5, "x": "five again"}]
    assert mem.world == sharded.world == 1 and mem.is_main_process
