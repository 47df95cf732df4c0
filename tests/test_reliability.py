"""Every subcommand over the bad-input corpus (tests/data/bad/): a one-line `opsft: error:` and exit 2, never
a traceback; or, with --skip-invalid, every row read is either used or counted with its reason.

`python tests/test_reliability.py` prints the table of docs/reliability.md from the same cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opsft.cli import main

BAD = Path(__file__).parent / "data" / "bad"
DATA_COMMANDS = ("score", "realign", "train", "eval", "prefs", "rejection")

# file -> (reason the bad row is counted under with --skip-invalid, what the error says without it)
BAD_ROWS = {
    "malformed_json.jsonl": ("malformed_json", "malformed_json.jsonl: row 2: malformed JSON"),
    "latin1.jsonl": ("not_utf8", "latin1.jsonl: row 2: is not UTF-8 text (byte 0xe9"),
    "blank_lines_long_prompt.jsonl": ("prompt_too_long", "blank_lines_long_prompt.jsonl: line 4 (row 2): field "
                                                         "'prompt'"),
    "bad_first_row.jsonl": ("missing_field", "bad_first_row.jsonl: row 1: field 'completion': is missing"),
    "not_an_object.jsonl": ("not_an_object", "not_an_object.jsonl: row 2: is not an object"),
    "wrong_type.jsonl": ("invalid_type", "wrong_type.jsonl: row 2: field 'completion': must be a string"),
    "empty_completion.jsonl": ("empty_completion", "empty_completion.jsonl: row 2: field 'completion': the "
                                                   "completion is empty"),
}
# file -> what the error says, with or without --skip-invalid (nothing in it can be used)
BAD_FILES = {
    "empty.jsonl": "empty.jsonl: no rows",
    "unknown_columns.jsonl": "no 'prompt'/'completion' or 'messages' columns",
    "not_a_list.json": "not_a_list.json: expected a list of objects",
    "malformed.json": "malformed.json: malformed JSON at line 3",
    "latin1.csv": "latin1.csv: is not UTF-8 text (byte 0xe9 on line 3)",
    "truncated.parquet": "truncated.parquet: not a readable Parquet file",
    "unsupported.txt": "unsupported.txt: unsupported file type '.txt'",
    "no_such_file.jsonl": "no_such_file.jsonl: no such file",
    ".": "is a directory, not a data file",
}
# bad option files, suites and run directories: (command line, what the error says)
BAD_OPTIONS = [
    (["score", "--config", "config_malformed.yaml"], "config_malformed.yaml: malformed YAML at line 3"),
    (["score", "--config", "config_duplicate_key.yaml"], "key 'batch_size' is given twice"),
    (["score", "--config", "config_wrong_types.yaml"],
     "config_wrong_types.yaml: skip_invalid must be true or false (got 'no')"),
    (["score", "--config", "config_word_for_number.yaml"],
     "config_word_for_number.yaml: batch_size must be a whole number (got 'eight')"),
    (["score", "--config", "config_unknown_option.yaml"], "unknown options ['batch_sise']"),
    (["score", "--config", "config_not_a_mapping.yaml"], "expected a mapping of option: value"),
    (["score", "--config", "."], "is a directory, not a file"),
    (["train", "--config", "train_sft_args_unknown.yaml"], "'optimm' is not an option of TRL's SFTConfig "
                                                           "(did you mean optim"),
    (["train", "--config", "train_sft_args_clash.yaml"], "'learning_rate' is set from opsft's own options"),
    (["train", "--config", "train_sft_args_duplicate.yaml"], "key 'optim' is given twice"),
    (["train", "--config", "train_sft_args_refused.yaml"], "TRL's SFTConfig refused these options"),
    (["eval", "--suite", "suite_wrong_type.yaml"], "in_domain.sums: k must be a whole number (got 'two')"),
    (["eval", "--suite", "suite_unknown_section.yaml"], "unknown sections ['test']"),
    (["eval", "--suite", "suite_missing_file.yaml"], "in_domain.sums: data file no_such_file.jsonl does not exist"),
    (["eval", "--suite", "suite_bad_drift.yaml"], "drift.limit must be >= 1 (got -3)"),
    (["eval", "--suite", "suite_unknown_set_option.yaml"], "in_domain.sums: unknown options ['temprature']"),
    (["train", "--loss", "dpo", "--data", "prefs_missing_rejected.jsonl"],
     "prefs_missing_rejected.jsonl: row 2: field 'rejected': is missing"),
    (["compare", "--runs", "compare/broken"], "compare/broken/eval_summary.json: unreadable"),
    (["compare", "--runs", "compare/not_a_summary"], "train_summary.json: not an opsft summary (no method)"),
    (["compare", "--runs", "compare/empty"], "compare/empty: no eval_summary.json or train_summary.json"),
    (["compare", "--runs", "compare/missing"], "compare/missing: no such directory"),
    (["lab", "--config", "lab_unknown_method.yaml"], "unknown lab method 'ppo': use one of sft, dft"),
    (["lab", "--config", "lab_wrong_type.yaml"], "lab_wrong_type.yaml: token_budget must be a whole number "
                                                 "(got 'lots')"),
    (["lab", "--config", "lab_bad_set.yaml"],
     "the lab's test sets: in_domain.sums: max_new_tokens must be >= 1 (got 0)"),
]


def command_line(command: str, model, data: str, out: Path, *extra) -> list[str]:
    """`command` on the tiny model with small limits, reading `data` (a file of the corpus)."""
    io = ["--model", str(model), "--data", str(BAD / data), "--no-progress", "--max-length", "400"]
    return {
        "score": ["score", *io, "--out", str(out), "--batch-size", "2"],
        "realign": ["realign", *io, "--out", str(out), "--max-new-tokens", "4", "--batch-size", "2"],
        "train": ["train", *io, "--output-dir", str(out), "--max-steps", "1", "--per-device-train-batch-size", "2"],
        "eval": ["eval", *io, "--out", str(out), "--max-new-tokens", "4"],
        "prefs": ["prefs", *io, "--out", str(out), "--k", "2", "--max-new-tokens", "4"],
        "rejection": ["rejection", *io, "--out", str(out), "--k", "2", "--max-new-tokens", "4"],
    }[command] + list(extra)


def option_line(args: list[str], model, out: Path) -> list[str]:
    """A BAD_OPTIONS command line, completed with the options its command requires."""
    command, *rest = args
    rest = [str(BAD / a) if a.endswith((".yaml", ".jsonl")) or a.startswith("compare/") or a == "." else a
            for a in rest]
    needs = {"score": ["--out"], "train": ["--output-dir"], "eval": ["--out"], "compare": ["--out"],
             "lab": ["--out", "--profile", "tiny"]}
    line = [command, *rest, "--no-progress"] if command not in ("compare",) else [command, *rest]
    if command in ("score", "train", "eval") and "--model" not in rest:
        line += ["--model", str(model)]
    if command in ("score", "train") and "--data" not in rest:
        line += ["--data", str(BAD / "empty_completion.jsonl")]
    line += [needs[command][0], str(out), *needs[command][1:]]
    return line


def one_line_error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err[-2000:])
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("opsft: error: ")]
    assert len(errors) == 1 and captured.err.strip().splitlines()[-1] == errors[0], captured.err
    return errors[0]


def counted(command: str, out: Path) -> tuple[int, int, dict]:
    """(rows read, rows used, rows skipped by reason) from a finished command's summary."""
    if command == "train":
        s = json.loads((out / "train_summary.json").read_text())
        return s["rows_read"], s["examples"], s["skipped"]
    if command == "eval":
        (s,) = json.loads((out / "eval_summary.json").read_text())["sets"].values()
        return s["rows_read"], s["problems"], s["skipped"]
    s = json.loads((out / "summary.json").read_text())
    used = {"score": "n_examples", "realign": "decoded", "prefs": "prompts", "rejection": "prompts"}[command]
    return s["rows_read"], s[used], s.get("skipped", s.get("skipped_input"))


@pytest.mark.parametrize("command", DATA_COMMANDS)
@pytest.mark.parametrize("data", BAD_ROWS)
def test_a_bad_row_is_a_one_line_error_or_a_counted_skip(tiny_model_dir, tmp_path, capsys, command, data):
    reason, message = BAD_ROWS[data]
    error = one_line_error(capsys, main(command_line(command, tiny_model_dir, data, tmp_path / "a")))
    assert message in error
    assert main(command_line(command, tiny_model_dir, data, tmp_path / "b", "--skip-invalid")) == 0
    rows_read, used, skipped = counted(command, tmp_path / "b")
    assert skipped == {reason: 1} and rows_read == used + 1 == 3
    (line,) = (tmp_path / "b" / "skipped.jsonl").read_text().splitlines() if command != "eval" else \
        (tmp_path / "b" / "sets" / data.split(".")[0] / "skipped.jsonl").read_text().splitlines()
    assert json.loads(line)["reason"] == reason and message in json.loads(line)["error"]


@pytest.mark.parametrize("command", DATA_COMMANDS)
@pytest.mark.parametrize("data", BAD_FILES)
def test_an_unusable_file_is_a_one_line_error_with_or_without_skip_invalid(tiny_model_dir, tmp_path, capsys,
                                                                          command, data):
    for extra in ([], ["--skip-invalid"]):
        error = one_line_error(capsys, main(command_line(command, tiny_model_dir, data, tmp_path / "o", *extra)))
        if data == "unknown_columns.jsonl" and extra:
            assert "left" in error and "(2 skipped" in error, error  # every row skipped: nothing to do
        else:
            assert BAD_FILES[data] in error, error


@pytest.mark.parametrize("args, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_files_and_run_directories_are_one_line_errors(tiny_model_dir, tmp_path, capsys, args,
                                                                     message):
    error = one_line_error(capsys, main(option_line(args, tiny_model_dir, tmp_path / "o")))
    assert message in error, error


def reliability_table(model) -> str:
    """The table of docs/reliability.md: every case of this file, run, with what opsft answered."""
    import contextlib
    import io
    import tempfile

    def outcome(line):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(line)
        last = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else ""
        return code, last.replace(str(BAD) + "/", "").replace(str(BAD), "tests/data/bad").replace(
            str(Path(line[-1]).parent) + "/", "")

    rows = ["| input (tests/data/bad/) | command | without --skip-invalid | with --skip-invalid |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for data in [*BAD_ROWS, *BAD_FILES]:
            answers = {}  # (without, with --skip-invalid) -> the commands that answered so
            for command in DATA_COMMANDS:
                code, error = outcome(command_line(command, model, data, Path(tmp) / f"{command}-a"))
                out = Path(tmp) / f"{command}-{data}"
                skip_code, skip_error = outcome(command_line(command, model, data, out, "--skip-invalid"))
                if skip_code == 0:
                    read, used, skipped = counted(command, out)
                    skip = f"exit 0: {read} rows read = {used} used + skipped {skipped}"
                else:
                    skip = f"exit {skip_code}: `{skip_error}`"
                answers.setdefault((f"exit {code}: `{error}`", skip), []).append(command)
            for (without, with_skip), commands in answers.items():
                rows.append(f"| {data} | {', '.join(commands)} | {without} | {with_skip} |")
        for args, _ in BAD_OPTIONS:
            code, error = outcome(option_line(args, model, Path(tmp) / "opt"))
            rows.append(f"| {' '.join(a for a in args[1:])} | {args[0]} | exit {code}: `{error}` | (same) |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_model, make_tokenizer

    with tempfile.TemporaryDirectory() as model_dir:
        tokenizer = make_tokenizer()
        make_model(len(tokenizer)).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        print(reliability_table(model_dir))
