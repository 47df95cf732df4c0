"""`opsft iterate` on the tiny model: each round's data come from the model the previous round trained, every problem
is accepted, falls back to its reference or is skipped (counted), and a killed run continues to the same result."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch

from opsft.cli import main

ROWS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(4) for b in range(3)]


def judge(text, reference, verify=None):
    """A scorer the tiny model can satisfy: an answer is 'correct' when its length is even."""
    return len(text) % 2 == 0


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


@pytest.fixture
def judged(monkeypatch):
    import opsft.engine.evaluation
    import opsft.engine.realignment

    monkeypatch.setattr(opsft.engine.evaluation, "answer_matches", judge)
    monkeypatch.setattr(opsft.engine.realignment, "answer_matches", judge)


def iterate(model_dir, data, out, *extra):
    return main(["iterate", "--model", str(model_dir), "--data", data, "--prompt-field", "question",
                 "--completion-field", "answer", "--output-dir", str(out), "--k", "2", "--max-new-tokens", "6",
                 "--per-device-train-batch-size", "4", "--token-budget", "400", "--learning-rate", "1e-3",
                 "--logging-steps", "1", "--no-progress", *extra])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_run(a, b):
    """Two iterate runs ended alike: the same rounds.jsonl (paths and wall times aside) and the same final weights."""
    from safetensors.torch import load_file

    def comparable(out):
        text = (out / "rounds.jsonl").read_text().replace(str(out), "OUT")
        return [{**r, "train": {k: v for k, v in r["train"].items() if k != "seconds"}}
                for r in map(json.loads, text.splitlines())]

    assert comparable(a) == comparable(b)
    x, y = (load_file(str(d / "final" / "model.safetensors")) for d in (a, b))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_each_round_trains_on_data_from_the_previous_rounds_model(tmp_path, tiny_model_dir, data, judged):
    out = tmp_path / "out"
    assert iterate(tiny_model_dir, data, out, "--rounds", "2") == 0
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["model"] == str(tiny_model_dir)
    assert rounds[1]["model"] == rounds[0]["trained_model"] == str(out / "round-1" / "train" / "final")
    for r in rounds:
        directory = out / f"round-{r['round']}"
        generation = json.loads((directory / "rejection" / "summary.json").read_text())
        assert generation["run"]["model"] == r["model"]  # the data of round r come from round r-1's model
        assert r["problems"] == len(ROWS) == r["problems_accepted"] + r["fallback_rows"]
        rows = read_jsonl(directory / "data.jsonl")
        own = read_jsonl(directory / "rejection" / "rejection.jsonl")
        assert r["accepted_rows"] == ({"rejection": len(own)} if own else {})
        assert r["rows"] == len(rows) == len(own) + r["fallback_rows"]
        for row in rows:
            source = row["iterate"]["source"]
            if source == "reference":  # a problem with nothing accepted trains on its reference
                assert row["completion"] == [{"role": "assistant", "content": row["answer"]}]
            else:
                assert source == "rejection" and judge(row["completion"][0]["content"], None)
        score = json.loads((directory / "score" / "summary.json").read_text())
        assert score["run"]["model"] == r["model"] and r["phi_mean"] == score["phi_mean"]["mean"]
        tokens = json.loads((directory / "data_summary.json").read_text())["tokens_per_example"]
        # equal shares of the budget; a step sees a batch of 4 of the round's rows (all of them when fewer)
        per_step = r["rows"] * tokens / math.ceil(r["rows"] / 4)
        assert r["train"]["steps"] == max(1, round(400 / 2 / per_step))
    assert sum(r["problems_accepted"] for r in rounds) > 0 and all(r["fallback_rows"] > 0 for r in rounds)
    assert (out / "final").resolve() == (out / "round-2" / "train" / "final").resolve()
    assert "| round |" in (out / "report.md").read_text() and (out / "rounds.png").read_bytes()[:4] == b"\x89PNG"


def test_a_killed_run_continues_to_the_uninterrupted_result(tmp_path, tiny_model_dir, data, judged, capsys):
    import opsft.commands.iterate as iterate_module

    assert iterate(tiny_model_dir, data, tmp_path / "whole", "--rounds", "2") == 0
    calls, run_train = [], iterate_module.run_train

    def killed_in_round_2(config):
        calls.append(config.output_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill between round 2's data and its training
        return run_train(config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(iterate_module, "run_train", killed_in_round_2)
        assert iterate(tiny_model_dir, data, tmp_path / "cut", "--rounds", "2") == 130
    assert not (tmp_path / "cut" / "round-2" / "train" / "final").exists()
    assert iterate(tiny_model_dir, data, tmp_path / "cut", "--rounds", "2") == 0
    same_run(tmp_path / "cut", tmp_path / "whole")


def test_skip_counts_problems_without_an_accepted_output_and_refuses_an_empty_round(tmp_path, tiny_model_dir, data,
                                                                                    judged, monkeypatch, capsys):
    out = tmp_path / "out"
    assert iterate(tiny_model_dir, data, out, "--rounds", "1", "--fallback", "skip") == 0
    (r,) = read_jsonl(out / "rounds.jsonl")
    assert r["fallback_rows"] == 0 and r["skipped_problems"] == len(ROWS) - r["problems_accepted"] > 0
    assert all(row["iterate"]["source"] == "rejection" for row in read_jsonl(out / "round-1" / "data.jsonl"))
    import opsft.engine.evaluation

    monkeypatch.setattr(opsft.engine.evaluation, "answer_matches", lambda *a, **k: False)
    capsys.readouterr()
    assert iterate(tiny_model_dir, data, tmp_path / "empty", "--rounds", "1", "--fallback", "skip") == 2
    error = capsys.readouterr().err
    assert "round 1: no problem" in error and "--fallback skip" in error and len(error.splitlines()) == 1


def test_realign_and_rejection_with_lora_merge_each_rounds_model(tmp_path, tiny_model_dir, data, judged):
    out, suite = tmp_path / "out", tmp_path / "suite.yaml"
    suite.write_text(f"in_domain:\n  sums: {{data: {data}, prompt_field: question, completion_field: answer, "
                     f"limit: 4, max_new_tokens: 6}}\n")
    assert iterate(tiny_model_dir, data, out, "--rounds", "2", "--source", "realign+rejection", "--lora",
                   "--lora-r", "4", "--loss", "idft", "--eval-suite", str(suite)) == 0
    rounds = read_jsonl(out / "rounds.jsonl")
    for r in rounds:  # each round's model evaluated on the suite
        evaluated = json.loads((out / f"round-{r['round']}" / "eval" / "eval_summary.json").read_text())
        assert evaluated["model"] == r["trained_model"] and evaluated["sets"]["sums"]["problems"] == 4
        assert r["eval"]["in_domain_accuracy"] == evaluated["in_domain_accuracy"]
    assert "in-domain" in (out / "report.md").read_text()
    assert rounds[1]["model"] == rounds[0]["trained_model"] == str(out / "round-1" / "merged")
    realigned = json.loads((out / "round-2" / "realign" / "summary.json").read_text())
    assert realigned["run"]["model"] == str(out / "round-1" / "merged")
    for r in rounds:
        assert set(r["generation"]) == {"realign", "rejection"}
        assert sum(r["accepted_rows"].values()) + r["fallback_rows"] == r["rows"]
    assert (out / "final").resolve() == (out / "round-2" / "merged").resolve()
    assert not (out / "round-1" / "merged").exists()  # removed once round 2 had trained (--keep-round-models keeps it)


@pytest.mark.parametrize("extra, message", [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--loss", "dpo"], "not on preference pairs"),
    (["--per-problem", "3"], "--per-problem (3) must be <= --k (2)"),
    (["--resume"], "always continues"),
])
def test_bad_options_are_one_line_errors(tmp_path, tiny_model_dir, data, capsys, extra, message):
    assert iterate(tiny_model_dir, data, tmp_path / "out", *extra) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.splitlines()) == 1


def test_another_runs_directory_is_refused(tmp_path, tiny_model_dir, data, judged, capsys):
    out = tmp_path / "out"
    assert iterate(tiny_model_dir, data, out, "--rounds", "1") == 0
    capsys.readouterr()
    assert iterate(tiny_model_dir, data, out, "--rounds", "1", "--loss", "dft") == 2
    assert "other settings" in capsys.readouterr().err


def test_two_processes_build_the_same_round_data(tmp_path, tiny_model_dir, data):
    """Under `accelerate launch` each stage shards as its command does; the round's data and their phi_mean are those
    of one process (the training then runs data-parallel, with twice the global batch)."""
    from conftest import launch

    flags = ["--model", str(tiny_model_dir), "--data", data, "--prompt-field", "question", "--completion-field",
             "answer", "--k", "2", "--max-new-tokens", "6", "--per-device-train-batch-size", "4", "--max-steps", "1",
             "--rounds", "2", "--source", "realign+rejection", "--no-progress"]
    assert main(["iterate", *flags, "--output-dir", str(tmp_path / "one")]) == 0
    launch(2, "iterate", *flags, "--output-dir", str(tmp_path / "two"))
    one, two = (read_jsonl(tmp_path / d / "rounds.jsonl") for d in ("one", "two"))
    assert read_jsonl(tmp_path / "two" / "round-1" / "data.jsonl") == read_jsonl(tmp_path / "one" / "round-1" /
                                                                                 "data.jsonl")
    assert two[0]["phi_mean"] == pytest.approx(one[0]["phi_mean"], abs=1e-5)
    assert [r["problems"] for r in two] == [len(ROWS)] * 2 and (tmp_path / "two" / "final").exists()
    assert list((tmp_path / "two" / "round-1" / "rejection").glob("progress-*-of-2.jsonl"))  # sharded


def test_an_empty_round_under_two_processes_is_the_same_one_line_error_on_each(tmp_path, tiny_model_dir, data):
    """The main process decides the round's data; when it finds none under --fallback skip, every process stops with
    its error (none is left waiting for the main process's answer). The tiny model is never right: nothing passes."""
    from conftest import launch

    run = launch(2, "iterate", "--model", str(tiny_model_dir), "--data", data, "--prompt-field", "question",
                 "--completion-field", "answer", "--k", "1", "--max-new-tokens", "4", "--max-steps", "1",
                 "--rounds", "1", "--fallback", "skip", "--no-progress", "--output-dir", str(tmp_path / "out"),
                 timeout=240, fails=True)
    assert run.stderr.count("opsft: error: round 1: no problem") == 2, run.stderr[-3000:]
    assert run.stderr.count("opsft: error") == 2, run.stderr[-3000:]


# `opsft iterate` in a process of its own, with the tests' scorer (`judge`, above)
KILLABLE = f"""
import sys
import opsft.engine.evaluation, opsft.engine.realignment
from opsft.cli import main
{inspect.getsource(judge)}
opsft.engine.evaluation.answer_matches = opsft.engine.realignment.answer_matches = judge
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("stage", ["rejection", "train"])
def test_a_run_killed_with_sigkill_mid_round_continues_to_the_uninterrupted_result(tmp_path, tiny_model_dir, data,
                                                                                   judged, stage):
    """kill -9 once round 2's generation (rejection) or training (train) has begun: no handler runs, files are
    left half written and the lock held by a dead process; the same command then ends with the same rounds.jsonl
    and the same final weights as a run never killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    flags = ["--model", str(tiny_model_dir), "--data", data, "--prompt-field", "question", "--completion-field",
             "answer", "--k", "2", "--max-new-tokens", "6", "--per-device-train-batch-size", "4", "--token-budget",
             "400", "--learning-rate", "1e-3", "--logging-steps", "1", "--rounds", "2", "--no-progress"]
    assert main(["iterate", *flags, "--output-dir", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, "iterate", *flags, "--output-dir", str(cut)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not (cut / "round-2" / stage).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read()[-3000:]
    assert len((cut / "rounds.jsonl").read_text().splitlines()) == 1  # killed inside round 2
    assert main(["iterate", *flags, "--output-dir", str(cut)]) == 0
    same_run(cut, tmp_path / "whole")
