"""The dataset loader: every source and shape, and a clear error (file, row, field) for every bad row."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opsft.inputs.data import load_examples
from opsft.inputs.rendering import tokenize_dataset
from opsft.runtime.errors import DataError, OpsftError

PC_ROWS = [{"prompt": "Q: 1+1?\nA:", "completion": " 2"}, {"prompt": "Q: 2+2?\nA:", "completion": " 4"}]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_jsonl_prompt_completion(tmp_path):
    data = load_examples(write_jsonl(tmp_path / "d.jsonl", PC_ROWS))
    assert data.shape == "prompt_completion"
    assert [(e.prompt, e.completion, e.index) for e in data.examples] == [("Q: 1+1?\nA:", " 2", 0),
                                                                        ("Q: 2+2?\nA:", " 4", 1)]


def test_json_parquet_csv_read_the_same(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"data": PC_ROWS}))
    pq.write_table(pa.Table.from_pylist(PC_ROWS), tmp_path / "d.parquet")
    with (tmp_path / "d.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows(PC_ROWS)
    for name in ("d.json", "d.parquet", "d.csv"):
        data = load_examples(str(tmp_path / name))
        assert [(e.prompt, e.completion) for e in data.examples] == [(r["prompt"], r["completion"]) for r in PC_ROWS]


def test_messages_split_into_prompt_and_final_assistant_turn(tmp_path):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"}]
    data = load_examples(write_jsonl(tmp_path / "m.jsonl", [{"messages": messages}]))
    assert data.shape == "messages"
    assert data.examples[0].prompt == messages[:2] and data.examples[0].completion == messages[2:]


def test_mapped_question_solution_columns_become_a_conversation(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "2+2?", "solution": "4", "final": 4}])
    data = load_examples(path, prompt_field="question", completion_field="solution", answer_field="final")
    example = data.examples[0]
    assert example.prompt == [{"role": "user", "content": "2+2?"}]
    assert example.completion == [{"role": "assistant", "content": "4"}]
    assert example.answer == "4" and example.row["final"] == 4


def test_gym_task_keeps_answer_and_scorer():
    data = load_examples("gym:gsm_symbolic?size=3&seed=5")
    assert len(data.examples) == 3
    example = data.examples[0]
    assert example.completion[0]["content"].rstrip().endswith(f"#### {example.answer}")
    assert example.verify(example.answer) == 1.0
    assert example.verify("not a number") < 1.0
    assert load_examples("gym:gsm_symbolic?size=3&seed=5").examples[0].row == example.row  # deterministic


def test_gym_task_without_rationale_uses_the_answer():
    example = load_examples("gym:basic_arithmetic?size=2&seed=0").examples[0]
    assert example.completion[0]["content"] == example.answer


@pytest.mark.parametrize("source, message", [
    ("gym:gsm_symbolc", "did you mean gsm_symbolic"),
    ("missing.jsonl", "missing.jsonl: no such file"),
    ("gym:gsm_symbolic?size=2&no_such_option=1", "bad options"),
])
def test_bad_sources(source, message):
    with pytest.raises(OpsftError, match=message):
        load_examples(source)


def test_unknown_shape_names_the_columns_and_the_flags(tmp_path):
    with pytest.raises(OpsftError, match=r"found \['answer', 'question'\].*--prompt-field"):
        load_examples(write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}]))


BAD_ROWS = [
    ('{"prompt": "p", "completion": "c"}', None),
    ('{"prompt": "p", "completion": ', "row 2: malformed JSON"),
    ('{"prompt": "p"}', "row 3: field 'completion': is missing"),
    ('{"prompt": "p", "completion": "  "}', "row 4: field 'completion': the completion is empty"),
    ('{"prompt": "", "completion": "c"}', "row 5: field 'prompt': the prompt is empty"),
    ('{"prompt": "p", "completion": 7}', "row 6: field 'completion': must be a string or a list of messages, got int"),
    ('["not", "an", "object"]', "row 7: is not an object"),
    ('{"prompt": [{"role": "user"}], "completion": [{"role": "assistant", "content": "c"}]}',
     "row 8: field 'prompt': must be a list of"),
]


@pytest.mark.parametrize("bad", range(1, len(BAD_ROWS)))
def test_each_bad_row_is_a_one_line_error_naming_file_row_and_field(tmp_path, bad):
    """The bad row is the file's second row, after bad - 1 blank lines: its line and its row are both named."""
    path = write_jsonl(tmp_path / "bad.jsonl", [BAD_ROWS[0][0]] + [""] * (bad - 1) + [BAD_ROWS[bad][0]])
    expected = BAD_ROWS[bad][1].split(": ", 1)[1]
    with pytest.raises(DataError) as error:
        load_examples(path)
    where = "row 2" if bad == 1 else f"line {bad + 1} (row 2)"
    assert str(error.value).startswith(f"{path}: {where}: ")
    assert (error.value.row, error.value.line) == (2, bad + 1)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_skip_invalid_counts_every_skipped_row_by_reason(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [row for row, _ in BAD_ROWS])
    data = load_examples(path, skip_invalid=True)
    assert len(data.examples) == 1
    assert sorted(e.reason for e in data.skipped) == sorted(
        ["malformed_json", "missing_field", "empty_completion", "empty_prompt", "invalid_type", "not_an_object",
         "invalid_messages"])
    assert [e.row for e in data.skipped] == list(range(2, 9))


def test_prompt_longer_than_max_length(tmp_path, tokenizer):
    rows = [{"prompt": "hello world " * 40, "completion": " ok"}, PC_ROWS[0]]
    data = load_examples(write_jsonl(tmp_path / "long.jsonl", rows))
    with pytest.raises(DataError, match=r"row 1: field 'prompt': is \d+ tokens, not shorter than --max-length 32"):
        tokenize_dataset(data.examples, tokenizer, max_length=32, source="long.jsonl")
    tokenized, skipped = tokenize_dataset(data.examples, tokenizer, max_length=32, skip_invalid=True)
    assert [t.index for t in tokenized] == [1] and [e.reason for e in skipped] == ["prompt_too_long"]


def test_long_completion_is_truncated_like_training(tmp_path, tokenizer):
    data = load_examples(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q:", "completion": " 1 2 3" * 30}]))
    (t,), _ = tokenize_dataset(data.examples, tokenizer, max_length=20)
    assert len(t.input_ids) == 20 and t.truncated


def test_a_bad_first_row_is_skipped_like_any_other(tmp_path):
    """The shape comes from the first row that has one: a malformed or incomplete row 1 is one counted skip."""
    for first in ('{"prompt": "p", "completion": ', '{"prompt": "p"}', '["p", "c"]', '{"question": "q"}'):
        path = write_jsonl(tmp_path / "d.jsonl", [first] + [row for row, message in BAD_ROWS if message is None] * 2)
        data = load_examples(path, skip_invalid=True)
        assert len(data.examples) == 2 and len(data.skipped) == 1 and data.skipped[0].row == 1
        assert data.shape == "prompt_completion"
        with pytest.raises(DataError, match=r"d.jsonl: row 1: "):
            load_examples(path)


def test_rows_that_are_not_utf8_are_counted_skips(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "p", "completion": "c"}\n'  # a UTF-8 byte-order mark is fine
                     + '{"prompt": "caf\xe9", "completion": "c"}\n'.encode("latin-1")
                     + b'{"prompt": "p2", "completion": "c2"}\n')
    with pytest.raises(DataError, match=r"d.jsonl: row 2: is not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_examples(str(path))
    data = load_examples(str(path), skip_invalid=True)
    assert [e.prompt for e in data.examples] == ["p", "p2"] and [e.reason for e in data.skipped] == ["not_utf8"]


def test_errors_after_loading_name_the_line_as_well_as_the_row(tmp_path, tokenizer):
    """A prompt too long for --max-length on line 4, after two blank lines, is row 2 of the data."""
    path = write_jsonl(tmp_path / "d.jsonl", [PC_ROWS[0], "", "", {"prompt": "hello world " * 40, "completion": "c"}])
    data = load_examples(path)
    assert [(e.index + 1, e.line) for e in data.examples] == [(1, 1), (2, 4)]
    with pytest.raises(DataError, match=r"d.jsonl: line 4 \(row 2\): field 'prompt': is \d+ tokens"):
        tokenize_dataset(data.examples, tokenizer, max_length=32, source=path)
    _, skipped = tokenize_dataset(data.examples, tokenizer, max_length=32, source=path, skip_invalid=True)
    assert skipped[0].record()["line"] == 4 and skipped[0].record()["row"] == 2
