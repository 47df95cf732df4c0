"""`opsft score` end to end on the tiny model: outputs, resume, bad input."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import launch

from opsft.cli import main

ROWS = [{"question": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}. #### {a + b}", "id": i}
        for i, (a, b) in enumerate([(1, 2), (17, 25), (3, 4), (10, 32), (5, 5), (6, 7), (8, 9)])]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def score(tmp_path, model_dir, data, *extra):
    return main(["score", "--model", str(model_dir), "--data", data, "--out", str(tmp_path / "out"),
                 "--prompt-field", "question", "--completion-field", "solution", "--batch-size", "3",
                 "--no-progress", *extra])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_writes_dataset_summary_plot_and_html(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert score(tmp_path, tiny_model_dir, data, "--save-tokens") == 0
    out = tmp_path / "out"
    rows = read_jsonl(out / "scored.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in ROWS]  # every row, input order, input columns kept
    for row in rows:
        assert row["n_tokens"] == len(row["token_phi"]) == len(row["token_ids"]) > 0
        assert row["phi_mean"] == pytest.approx(sum(row["token_phi"]) / row["n_tokens"])
        assert row["phi_pos_ratio"] == pytest.approx(sum(p > 0 for p in row["token_phi"]) / row["n_tokens"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_examples"] == len(ROWS) and summary["skipped"] == {}
    assert summary["run"]["prompt_format"] == "chat" and summary["run"]["temperature"] == 1.0
    assert summary["n_tokens"] == sum(r["n_tokens"] for r in rows)
    assert (out / "phi_hist.png").read_bytes()[:4] == b"\x89PNG"
    html = (out / "worst_examples.html").read_text()
    assert html.count("class='ex'") == len(ROWS) and "title='phi " in html
    printed = capsys.readouterr().out
    assert "phi_mean  mean ± sem" in printed and "out-of-distribution (phi_mean < -0.1)" in printed
    assert (out / "summary.md").read_text().startswith("| model |")


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert score(tmp_path, tiny_model_dir, data) == 0
    out = tmp_path / "out"
    complete = read_jsonl(out / "scored.jsonl")
    log = (out / "progress.jsonl").read_text().splitlines()
    # as if killed after the first batch, in the middle of writing the second
    (out / "progress.jsonl").write_text("\n".join(log[:4]) + "\n" + log[4][:20])
    (out / "scored.jsonl").unlink()
    capsys.readouterr()
    assert score(tmp_path, tiny_model_dir, data) == 0
    assert "3 examples already scored, 4 to go" in capsys.readouterr().out
    resumed = read_jsonl(out / "scored.jsonl")
    assert [r["id"] for r in resumed] == [r["id"] for r in ROWS]
    for a, b in zip(resumed, complete):
        assert a["phi_mean"] == pytest.approx(b["phi_mean"], abs=1e-6)
    assert len(read_jsonl(out / "progress.jsonl")) == 1 + len(ROWS)


def test_changed_settings_do_not_mix_with_an_earlier_run(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert score(tmp_path, tiny_model_dir, data) == 0
    assert score(tmp_path, tiny_model_dir, data, "--temperature", "0.5") == 2
    assert "temperature: 1.0 -> 0.5" in capsys.readouterr().err
    assert score(tmp_path, tiny_model_dir, data, "--temperature", "0.5", "--overwrite") == 0


def test_edited_data_is_not_resumed_into_old_results(tmp_path, tiny_model_dir, capsys):
    assert score(tmp_path, tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", ROWS)) == 0
    edited = [dict(ROWS[0], solution="something else entirely")] + ROWS[1:]
    assert score(tmp_path, tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", edited)) == 2
    assert "inputs_sha256" in capsys.readouterr().err


def test_all_rows_skipped_is_an_error_not_an_empty_report(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ['{"question": "q"}', '{"question": "q", "solution": ""}'])
    assert score(tmp_path, tiny_model_dir, data, "--skip-invalid") == 2
    assert "no example left to score (2 skipped" in capsys.readouterr().err


@pytest.mark.parametrize("row, extra, message", [
    ('{"question": "q", "solution": ', [], "d.jsonl: row 2: malformed JSON"),
    ('{"question": "q"}', [], "d.jsonl: row 2: field 'solution': is missing"),
    ('{"question": "q", "solution": ""}', [], "d.jsonl: row 2: field 'solution': the completion is empty"),
    (json.dumps({"question": "long " * 200, "solution": "s"}), ["--max-length", "64"],
     "d.jsonl: row 2: field 'prompt': is"),
])
def test_bad_input_is_one_line_naming_file_row_field(tmp_path, tiny_model_dir, capsys, row, extra, message):
    data = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], row])
    assert score(tmp_path, tiny_model_dir, data, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("opsft: error: ") and message in err and err.count("\n") == 1


def test_unknown_model_is_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert main(["score", "--model", "no-such-model", "--data", data, "--prompt-field", "question",
                 "--completion-field", "solution", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and err.count("\n") == 1


def test_skip_invalid_counts_skipped_rows_by_reason(tmp_path, tiny_model_dir):
    rows = ROWS[:3] + ['{"question": "q"}', '{"question": "q", "solution": " "}', "{oops",
                       json.dumps({"question": "long " * 200, "solution": "s"})]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    assert score(tmp_path, tiny_model_dir, data, "--skip-invalid", "--max-length", "64") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_examples"] == 3
    assert summary["skipped"] == {"missing_field": 1, "empty_completion": 1, "malformed_json": 1,
                                  "prompt_too_long": 1}
    skipped = read_jsonl(tmp_path / "out" / "skipped.jsonl")
    assert sorted(s["row"] for s in skipped) == [4, 5, 6, 7]


def test_yaml_config_with_flag_override_and_parquet(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    config = tmp_path / "score.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata: {data}\nprompt_field: question\n"
                      f"completion_field: solution\nformat: parquet\ntemperature: 2.0\nprogress: false\n")
    assert main(["score", "--config", str(config), "--temperature", "0.7", "--out", str(tmp_path / "o")]) == 0
    table = pq.read_table(tmp_path / "o" / "scored.parquet").to_pylist()
    assert len(table) == len(ROWS) and "phi_mean" in table[0]
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["run"]["temperature"] == 0.7


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "score" in capsys.readouterr().out


@pytest.mark.slow
def test_score_smollm2_on_gsm_symbolic(tmp_path):
    assert main(["score", "--model", "smollm2-135m", "--data", "gym:gsm_symbolic?size=6&seed=0",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_examples"] == 6 and summary["run"]["prompt_format"] == "chat"
    assert -3.0 < summary["phi_mean"]["mean"] < 0.5  # human-written rationales: near or below 0, never wildly off


# ---- reliability (#12): every bad option or input is one line and exit 2, before any model loads -------------

def one_line(capsys, code) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.startswith("opsft: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command, extra, message", [
    ("score", ["--batch-size", "-2"], "--batch-size must be >= 1 (got -2)"),
    ("realign", ["--batch-size", "-1"], "--batch-size must be >= 1 (got -1)"),
    ("score", ["--temperature", "0"], "--temperature must be > 0 (got 0.0)"),
    ("score", ["--in-threshold", "-0.5"], "--in-threshold (-0.5) must be >= --out-threshold (-0.1)"),
    ("score", ["--device", "bogus"], "--device 'bogus': not a device"),
    ("eval", ["--top-p", "0"], "--top-p must be in (0, 1] (got 0.0)"),
    ("eval", ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1 (got 0)"),
    ("realign", ["--top-p", "1.5"], "--top-p must be in (0, 1] (got 1.5)"),
    ("prefs", ["--top-p", "1.5"], "--top-p must be in (0, 1] (got 1.5)"),
    ("realign", ["--h1", "0.7", "--h2", "0.3"], "--h1 (0.7) must be <= --h2 (0.3)"),
    ("realign", ["--beta", "-1"], "--beta must be >= 0 (got -1.0)"),
    ("realign", ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1 (got 0)"),
    ("realign", ["--hint-template", "{question} {answer}"], "--hint-template: unknown placeholder(s) {answer}"),
    ("train", ["--lora-r", "0"], "--lora-r must be >= 1 (got 0)"),
    ("train", ["--logging-steps", "0"], "--logging-steps must be >= 1 (got 0)"),
    ("train", ["--lora-dropout", "2"], "--lora-dropout must be in [0, 1) (got 2.0)"),
    ("train", ["--lr-scheduler-type", "bogus"], "argument --lr-scheduler-type: invalid choice: 'bogus'"),
    ("train", ["--batch-size", "8"], "unrecognized arguments: --batch-size 8"),
])
def test_bad_options_are_refused_before_the_model_loads(tmp_path, capsys, command, extra, message):
    """--model names nothing: had the model been loaded first, the error would be about the model."""
    out = "--output-dir" if command == "train" else "--out"
    code = main([command, "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "d.jsonl"),
                 out, str(tmp_path / "o"), *extra])
    assert message in one_line(capsys, code)


def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["score", "--model", "m", "--data", "d.jsonl", "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert "--device cuda: CUDA is not available here" in one_line(capsys, code)


def test_out_naming_a_file_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    for command, flag in (("score", "--out"), ("eval", "--out"), ("train", "--output-dir"), ("prefs", "--out")):
        code = main([command, "--model", "m", "--data", "d.jsonl", flag, str(tmp_path / "taken")])
        assert f"{flag} {tmp_path / 'taken'}: is a file, not a directory" in one_line(capsys, code)


def test_a_directory_that_is_not_a_model_is_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "not-a-model").mkdir()
    code = score(tmp_path, tmp_path / "not-a-model", data)
    assert "is not a model directory (no config.json" in one_line(capsys, code)
    code = score(tmp_path, tmp_path / "d.jsonl", data)
    assert "is a file, not a model directory" in one_line(capsys, code)


def test_parquet_of_mixed_column_types_is_refused_before_scoring(tmp_path, tiny_model_dir, capsys):
    rows = [dict(r, id=i if i % 2 else str(i)) for i, r in enumerate(ROWS)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    code = score(tmp_path, tiny_model_dir, data, "--format", "parquet")
    error = one_line(capsys, code)
    assert "cannot be written as Parquet" in error and "use --format jsonl" in error
    assert not (tmp_path / "out" / "progress.jsonl").exists()  # nothing was scored, so nothing is lost
    assert score(tmp_path, tiny_model_dir, data, "--format", "jsonl") == 0


def test_yaml_values_are_checked_like_flags(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:2] + ['{"question": "q"}'])
    config = tmp_path / "c.yaml"
    for text, message in (('skip_invalid: "no"\n', "c.yaml: skip_invalid must be true or false (got 'no')"),
                          ('limit: "two"\n', "c.yaml: limit must be a whole number (got 'two')"),
                          ("limit: 2\nlimit: 3\n", "key 'limit' is given twice"),
                          ("limit: [1\n", "malformed YAML at line 2")):
        config.write_text(text)
        code = score(tmp_path, tiny_model_dir, data, "--config", str(config))
        assert message in one_line(capsys, code)
    config.write_text("skip_invalid: no\nlearning_rate: 1e-5\n")  # YAML's own false; a flag's float syntax
    assert main(["train", "--config", str(config), "--model", "m", "--data", "d", "--output-dir",
                 str(tmp_path / "t"), "--lora-r", "0"]) == 2
    assert "--lora-r must be >= 1" in capsys.readouterr().err  # the YAML values themselves were accepted


def test_an_unexpected_error_is_one_line_with_its_traceback_saved(tmp_path, capsys, monkeypatch):
    import opsft.cli

    def broken(config):
        raise ZeroDivisionError("division by zero somewhere deep")

    monkeypatch.setitem(opsft.cli.COMMANDS, "compare", (opsft.cli.COMMANDS["compare"][0], broken, "compare"))
    assert main(["compare", "--runs", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("opsft: error: unexpected ZeroDivisionError: division by zero somewhere deep")
    saved = err.split("the traceback is in ")[1].split(",")[0]
    assert "Traceback" in open(saved).read() and "broken" in open(saved).read()
    with pytest.raises(ZeroDivisionError):
        main(["--traceback", "compare", "--runs", str(tmp_path), "--out", str(tmp_path / "o")])


def test_a_second_run_on_the_same_output_directory_is_refused(tmp_path, tiny_model_dir, capsys):
    """The first run is another process holding the lock; the second names it and leaves its files alone."""
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time, sys
from opsft.runtime.locking import output_lock
with output_lock({str(out)!r}, "opsft score"):
    print("locked", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        data = write_jsonl(tmp_path / "d.jsonl", ROWS)
        code = score(tmp_path, tiny_model_dir, data)
        assert f"is in use by another opsft run: process {holder.pid} (opsft score" in one_line(capsys, code)
        assert not (out / "progress.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert score(tmp_path, tiny_model_dir, data) == 0  # a killed holder leaves no stale lock


def test_two_processes_score_like_one_and_resume_with_another_count(tmp_path, tiny_model_dir):
    """`accelerate launch` with 2 CPU processes (gloo): each scores its share (index % 2), the main process merges.
    The scored file equals one process's (phi to fp32 round-off: the shards batch other neighbours, so padding
    differs), and a run cut short in one process is finished by two, then reread whole by one."""
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    flags = ["--model", str(tiny_model_dir), "--data", data, "--prompt-field", "question", "--completion-field",
             "solution", "--batch-size", "2", "--no-progress"]

    def two_processes(out):
        launch(2, "score", *flags, "--out", str(out))

    def same(a, b):
        assert [r["id"] for r in a] == [r["id"] for r in b]
        for x, y in zip(a, b):
            assert {k: v for k, v in x.items() if not k.startswith("phi")} == \
                   {k: v for k, v in y.items() if not k.startswith("phi")}
            for key in ("phi_mean", "phi_std", "phi_sum", "phi_pos_ratio"):
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), key

    assert main(["score", *flags, "--out", str(tmp_path / "one")]) == 0
    one = read_jsonl(tmp_path / "one" / "scored.jsonl")
    two_processes(tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two").glob("progress*")) == ["progress-0-of-2.jsonl",
                                                                           "progress-1-of-2.jsonl"]
    same(read_jsonl(tmp_path / "two" / "scored.jsonl"), one)
    # cut short in one process (3 of 7 rows logged), finished by two, then reread by one: nothing scored twice
    partial = tmp_path / "partial"
    partial.mkdir()
    lines = (tmp_path / "one" / "progress.jsonl").read_text().splitlines()
    (partial / "progress.jsonl").write_text("\n".join(lines[:4]) + "\n")
    two_processes(partial)
    logged = [json.loads(line)["index"] for p in sorted(partial.glob("progress*.jsonl"))
              for line in p.read_text().splitlines()[1:]]
    assert sorted(logged) == list(range(len(ROWS)))
    same(read_jsonl(partial / "scored.jsonl"), one)
    assert main(["score", *flags, "--out", str(partial)]) == 0
    same(read_jsonl(partial / "scored.jsonl"), one)
