"""`opsft lab --profile tiny`: every stage produces its outputs; an interrupted lab continues where it stopped."""

from __future__ import annotations

import json

import pytest

from opsft.cli import main
from opsft.lab import METHODS, running_sums


def test_running_sums_rationale():
    assert running_sums("42 - 25 - 73") == "42 - 25 = 17\n17 - 73 = -56\n#### -56"
    assert running_sums("5 + 7") == "5 + 7 = 12\n#### 12"


def lab(out, *extra):
    return main(["lab", "--profile", "tiny", "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def tiny_lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    assert lab(out) == 0
    return out


def test_every_stage_produces_its_outputs(tiny_lab, capsys):
    out = tiny_lab
    for stage in ("1-data", "2-base", "3-score", "4-realign", "5-train", "6-eval", "7-report"):
        assert (out / "stages" / f"{stage}.json").exists(), stage
    assert (out / "data" / "train.jsonl").exists() and (out / "data" / "suite.yaml").exists()
    assert (out / "eval" / "base" / "eval_summary.json").exists()
    assert (out / "score" / "raw" / "summary.json").exists() and (out / "realign" / "summary.json").exists()
    runs = json.loads((out / "stages" / "5-train.json").read_text())["runs"]
    assert set(runs) == {f"{m}-seed0" for m in METHODS}
    budgets = {name: r["train_tokens"] for name, r in runs.items()}
    for name, run in runs.items():
        assert (out / "runs" / name / "final").is_dir() and (out / "runs" / name / "eval" / "eval_summary.json").exists()
        # the same budget for every method, up to one step's worth of tokens
        assert abs(run["train_tokens"] - 3000) <= 0.5 * 4 * run["tokens_per_example"], name
    for picture in ("accuracy.png", "phi_hist.png", "training_curves.png"):
        assert (out / "report" / picture).read_bytes()[:4] == b"\x89PNG"
    table = (out / "report" / "results.md").read_text()
    assert all(f"| {m} | 1 |" in table for m in METHODS) and "| base (no training) |" in table
    rows = json.loads((out / "report" / "results.json").read_text())
    assert all(r["in_domain_ci95"] is not None and r["out_of_domain_ci95"] is not None for r in rows)
    assert (out / "report" / "index.html").read_text().count("<table>") == 3 and "Accuracy per test set" in table
    differences = json.loads((out / "report" / "differences.json").read_text())
    assert "Difference from sft" in table and {d["method"] for d in differences} == {"base (no training)",
                                                                                     *METHODS} - {"sft"}
    summary = {m: json.loads((out / ("eval/base" if m == "base (no training)" else f"runs/{m}-seed0/eval")
                              / "eval_summary.json").read_text()) for m in ["sft", *(d["method"] for d in differences)]}
    for d in differences:  # one seed, one sample per problem: the paired difference is the accuracy difference
        for group in ("in_domain", "out_of_domain"):
            assert d[group]["delta"] == pytest.approx(summary[d["method"]][f"{group}_accuracy"] -
                                                      summary["sft"][f"{group}_accuracy"])
    assert len(set(budgets.values())) > 1  # tokens per example differ, so the step counts do too


def test_rerun_reuses_every_stage(tiny_lab, capsys):
    import yaml

    suite = tiny_lab / "data" / "suite.yaml"
    written = yaml.safe_load(suite.read_text())
    suite.write_text(yaml.safe_dump({k: v for k, v in written.items() if k != "drift"}))  # as an older opsft wrote it
    assert lab(tiny_lab) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, reused") == 7 and "| sft | 1 |" in printed
    assert yaml.safe_load(suite.read_text()) == written


@pytest.mark.parametrize("target, dies_at, stage", [
    ("opsft.eval_run.run_eval", 1, "2/7 base"), ("opsft.score_run.run_score", 1, "3/7 score"),
    ("opsft.realign_run.run_realign", 1, "4/7 realign"), ("opsft.train_run.run_train", 3, "5/7 train"),
    ("opsft.eval_run.run_eval", 3, "6/7 eval")])
def test_killed_lab_continues_from_the_interrupted_stage(tmp_path, monkeypatch, capsys, target, dies_at, stage):
    import importlib

    module_name, function = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real, calls = getattr(module, function), []

    def dies(config, **kwargs):
        calls.append(config)
        if len(calls) == dies_at:
            raise KeyboardInterrupt
        return real(config, **kwargs)

    monkeypatch.setattr(module, function, dies)
    assert lab(tmp_path) == 130  # interrupted
    monkeypatch.setattr(module, function, lambda config, **kwargs: (calls.append(config), real(config, **kwargs))[1])
    before = len(calls)
    capsys.readouterr()
    assert lab(tmp_path) == 0
    printed = capsys.readouterr().out
    assert f"[lab] stage {stage} ..." in printed
    for earlier in range(1, int(stage[0])):
        assert f"[lab] stage {earlier}/7" in printed and "done earlier, reused" in printed
    if function == "run_train":  # the two finished trainings are not redone
        assert len(calls) - before == len(METHODS) - 2
    assert (tmp_path / "report" / "results.md").exists()


def test_lab_on_your_own_model_and_files(tmp_path, capsys):
    """Every default replaced: a local model directory, JSONL files with their own column names, sets from YAML."""
    from opsft.lab import _gym_rows
    from opsft.tiny import build_tiny_model

    rows = _gym_rows("gym:chain_sum?size=16&seed=0&min_terms=2&max_terms=2&min_digits=1&max_digits=1", "running_sums")
    model = build_tiny_model(tmp_path / "my-model", [r["question"] + " " + r["solution"] for r in rows] * 4)
    for name, part in (("train", rows[:10]), ("test", rows[10:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"q": r["question"], "work": r["solution"],
                                                                    "final": r["answer"]}) + "\n" for r in part))
    sets = {"data": str(tmp_path / "test.jsonl"), "prompt_field": "q", "completion_field": "work",
            "answer_field": "final"}
    drift = {"data": str(tmp_path / "test.jsonl"), "prompt_field": "q", "completion_field": "work"}
    (tmp_path / "lab.yaml").write_text(json.dumps({"in_domain": {"mine": sets}, "out_of_domain": {"also_mine": sets},
                                                   "drift_data": drift}))
    out = tmp_path / "lab"
    assert main(["lab", "--profile", "tiny", "--config", str(tmp_path / "lab.yaml"), "--model", str(model),
                 "--train-data", str(tmp_path / "train.jsonl"), "--prompt-field", "q", "--completion-field", "work",
                 "--methods", "sft", "idft", "--token-budget", "600", "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "lab_config.json").read_text())
    assert settings["model"] == str(model) and settings["methods"] == ["sft", "idft"]
    assert json.loads((out / "stages" / "1-data.json").read_text())["train"] == str(tmp_path / "train.jsonl")
    assert json.loads((out / "score" / "raw" / "summary.json").read_text())["n_examples"] == 10
    base = json.loads((out / "eval" / "base" / "eval_summary.json").read_text())
    assert set(base["sets"]) == {"mine", "also_mine"} and base["sets"]["mine"]["problems"] == 6
    assert base["drift"]["samples"] == 6 and base["drift"]["base"] == str(model)
    table = (out / "report" / "results.md").read_text()
    assert "| sft | 1 |" in table and "| idft | 1 |" in table and "| mine | also_mine |" in table


def test_shipped_lab_configs_are_valid_labs(tmp_path):
    """configs/lab/*.yaml resolve into a lab (known options, known methods) whose suite `opsft eval` accepts."""
    from pathlib import Path

    import yaml

    from opsft.cli import _build_config
    from opsft.eval_run import EvalConfig, eval_sets
    from opsft.lab import LabConfig, eval_suite

    configs = sorted((Path(__file__).parent.parent / "configs" / "lab").glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        settings = _build_config(LabConfig, {"config": str(path), "profile": "full"})
        settings = settings.resolved()
        suite = tmp_path / f"{path.stem}.yaml"
        suite.write_text(yaml.safe_dump(eval_suite(settings, settings["model"])))
        sets, drift = eval_sets(EvalConfig(model=settings["model"], suite=str(suite)))
        assert {s.name for s in sets} == {*settings["in_domain"], *settings["out_of_domain"]}, path
        assert drift["base"] == settings["model"], path


def test_methods_are_named_or_loss_at_data():
    from opsft.errors import OpsftError
    from opsft.lab import LabConfig, method_spec

    assert method_spec("sft_realigned") == ("sft", "realigned") and method_spec("eaft@rejection") == ("eaft", "rejection")
    assert method_spec("asft@raw") == ("asft", "raw") and method_spec("simpo@prefs") == ("simpo", "prefs")
    for bad in ("ppo@raw", "sft@prefs", "dpo@raw", "idft@test", "sft@"):
        with pytest.raises(OpsftError, match=f"unknown lab method '{bad}'"):
            method_spec(bad)
    assert LabConfig(methods=["sft", "eaft@rejection"]).methods == ["sft", "eaft@rejection"]
    with pytest.raises(OpsftError, match="unknown lab method 'ppo'"):
        LabConfig(methods=["ppo"])


def test_rejection_data_are_the_models_answers_to_training_problems_only(tiny_lab):
    """The tiny profile keeps every finished answer (a plumbing check: its random model is never right); the
    rows are the base model's own samples of training problems, none of them a test problem."""
    import yaml

    from opsft.data import load_examples

    out = tiny_lab
    rows = [json.loads(line) for line in (out / "rejection" / "rejection.jsonl").read_text().splitlines()]
    samples = {r["row"]: r["samples"] for r in map(json.loads, (out / "rejection" / "samples.jsonl").read_text()
                                                   .splitlines())}
    train = [json.loads(line)["question"] for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    suite = yaml.safe_load((out / "data" / "suite.yaml").read_text())
    tests = {e.prompt[-1]["content"] if isinstance(e.prompt, list) else e.prompt
             for group in ("in_domain", "out_of_domain") for data in suite[group].values()
             for e in load_examples(data).examples}
    assert rows and all(row["question"] in train and row["question"] not in tests for row in rows)
    for row in rows:
        own = samples[row["rejection"]["source_row"]][row["rejection"]["sample"]]
        assert own["text"] == row["completion"][0]["content"] and own["finish_reason"] == "eos"
    summary = json.loads((out / "rejection" / "summary.json").read_text())
    assert summary["prompts"] == len(train) == summary["prompts_kept"] + summary["prompts_without_answer"]
    assert (out / "score" / "rejection" / "summary.json").exists()  # its phi_mean is in the report
    runs = json.loads((out / "stages" / "5-train.json").read_text())["runs"]
    assert "skipped" not in runs["sft_rejection-seed0"] and "skipped" not in runs["idft_rejection-seed0"]
