"""`opsft score` end to end on the tiny model: outputs, resume, bad input."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

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
