"""`opsft lab --profile tiny`: every stage produces its outputs; an interrupted lab continues where it stopped."""

from __future__ import annotations

import json

import pytest
from conftest import launch

from opsft.cli import main
from opsft.lab.methods import METHODS
from opsft.lab.study import running_sums


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


STAGES = ("1-data", "2-score", "3-realign", "4-select", "5-train", "6-eval", "7-report")


@pytest.mark.parametrize("regime", ["weak", "strong"])
def test_every_stage_produces_its_outputs(tiny_lab, regime):
    out = tiny_lab / regime
    for stage in STAGES:
        assert (out / "stages" / f"{stage}.json").exists(), stage
    assert (out / "data" / "train.jsonl").exists() and (out / "data" / "suite.yaml").exists()
    assert (out / "eval" / "base" / "eval_summary.json").exists()
    assert (out / "score" / "raw" / "summary.json").exists() and (out / "realign" / "summary.json").exists()
    runs = json.loads((out / "stages" / "5-train.json").read_text())["runs"]
    assert set(runs) == {f"{m}-seed0" for m in METHODS}
    budgets = {name: r["train_tokens"] for name, r in runs.items()}
    rows = {r["method"]: r for r in json.loads((out / "report" / "results.json").read_text())}
    for name, run in runs.items():
        assert (out / run["dir"] / "final").is_dir() and (out / run["dir"] / "eval" / "eval_summary.json").exists()
        if name == "sdft-seed0":  # its samples' lengths are known once made: the row gives the tokens counted
            trained = json.loads((out / run["dir"] / "train_summary.json").read_text())
            assert run["train_tokens"] is None and trained["sdft"]["teacher_model_kind"] == "base"
            assert rows["sdft"]["train_tokens"][0] == trained["train_tokens"] > 0
            continue
        # the same budget for every method, up to one step's worth of tokens
        assert abs(run["train_tokens"] - 3000) <= 0.5 * 4 * run["tokens_per_example"], name
    for picture in ("accuracy.png", "learning_vs_forgetting.png", "phi_hist.png", "training_curves.png"):
        assert (out / "report" / picture).read_bytes()[:4] == b"\x89PNG"
    table = (out / "report" / "results.md").read_text()
    assert all(f"| {m} | 1 |" in table for m in METHODS) and "| base (no training) |" in table
    assert f"({'tiny'}, {regime} regime)" in table
    assert "sdft (TRL's experimental SDFTTrainer), as sdft-seed0 ran it: teacher_model_kind 'base'" in table
    assert all(r["in_domain_ci95"] is not None and r["out_of_domain_ci95"] is not None for r in rows.values())
    assert (out / "report" / "index.html").read_text().count("<table>") == 4 and "Accuracy per test set" in table
    differences = json.loads((out / "report" / "differences.json").read_text())
    assert "Difference from sft" in table and {d["method"] for d in differences} == {"base (no training)",
                                                                                     *METHODS} - {"sft"}
    summary = {m: json.loads((out / ("eval/base" if m == "base (no training)" else f"{runs[m + '-seed0']['dir']}/eval")
                              / "eval_summary.json").read_text()) for m in ["sft", *(d["method"] for d in differences)]}
    for d in differences:  # one seed, one sample per problem: the paired difference is the accuracy difference
        for group in ("in_domain", "out_of_domain"):
            assert d[group]["delta"] == pytest.approx(summary[d["method"]][f"{group}_accuracy"] -
                                                      summary["sft"][f"{group}_accuracy"])
    assert len(set(budgets.values())) > 1  # tokens per example differ, so the step counts do too


def same_up_to_round_off(a, b, where: str) -> None:
    """Equal, floats to training round-off; wall times left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in a if "seconds" not in k}
        assert keys == {k for k in b if "seconds" not in k}, where
        for key in keys:
            same_up_to_round_off(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_up_to_round_off(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), where
    else:
        assert a == b, where


def test_two_processes_give_the_stage_outputs_of_one(tiny_lab, tmp_path):
    """`accelerate launch` with 2 CPU processes: training data-parallel on the same global batch, generation and
    scoring sharded. Every stage's result equals one process's: data, phi, rewrites, validation accuracies and
    chosen learning rates, steps and tokens, test accuracies exactly; phi, drift and training losses to
    training round-off. Except sdft's: TRL's SDFTTrainer samples inside training from one random stream per
    process, so its samples, and the model trained on them, depend on the number of processes (it still runs)."""
    launch(2, "lab", "--profile", "tiny", "--out", str(tmp_path), "--no-progress", timeout=900)
    same_stage_outputs(tiny_lab, tmp_path, sampled_in_training=("sdft",))
    for regime in ("weak", "strong"):
        trained = json.loads((tmp_path / regime / "runs" / "sdft-seed0" / "train_summary.json").read_text())
        assert trained["train_tokens"] > 0 and (tmp_path / regime / "runs" / "sdft-seed0" / "eval").is_dir()


def test_workers_give_the_stage_outputs_of_one_at_a_time(tiny_lab, tmp_path):
    """--workers 2: the trainings and evaluations of stages 4-6 two at a time, in processes of one torch thread.
    Every stage's result equals the lab's that ran them one at a time."""
    assert lab(tmp_path, "--workers", "2") == 0
    same_stage_outputs(tiny_lab, tmp_path)


def same_stage_outputs(one_root, two_root, sampled_in_training=()):
    """Two tiny labs (both regimes) agree: every stage's result, test accuracies exactly, training losses and
    phi and drift to training round-off; the methods `sampled_in_training` left out of what their training
    decides (their evaluations, losses and report rows)."""
    def leave_out(value):
        if isinstance(value, dict):
            return {k: leave_out(v) for k, v in value.items()
                    if not (k in sampled_in_training or k.split("-seed")[0] in sampled_in_training)}
        if isinstance(value, list):
            return [leave_out(v) for v in value if not (isinstance(v, dict) and v.get("method") in sampled_in_training)]
        return value

    for regime in ("weak", "strong"):
        one, two = one_root / regime, two_root / regime

        def read(out, path):
            return leave_out(json.loads((out / path).read_text().replace(str(out), "OUT")))

        for stage in STAGES:
            same_up_to_round_off(read(one, f"stages/{stage}.json"), read(two, f"stages/{stage}.json"), stage)
        assert read(one, "stages/6-eval.json")["runs"].keys() == read(two, "stages/6-eval.json")["runs"].keys()
        for name, accuracies in read(one, "stages/6-eval.json")["runs"].items():
            other = read(two, "stages/6-eval.json")["runs"][name]
            assert (accuracies["in_domain"], accuracies["out_of_domain"]) == (other["in_domain"],
                                                                             other["out_of_domain"]), name
            run = read(one, "stages/5-train.json")["runs"][name]["dir"]
            losses = [[h["loss"] for h in read(out, f"{run}/train_summary.json")["log_history"] if "loss" in h]
                      for out in (one, two)]
            assert losses[1] == pytest.approx(losses[0], rel=1e-4) and losses[0], name
        same_up_to_round_off(read(one, "report/results.json"), read(two, "report/results.json"), "results.json")
    same_up_to_round_off(*(leave_out(json.loads((out / "report" / "regimes.json").read_text().replace(str(out), "OUT")))
                           for out in (one_root, two_root)), "regimes.json")


def test_regimes_differ_in_how_close_the_training_solutions_are_to_the_model(tiny_lab):
    """weak: running sums; strong: 'The answer is N.' on two-term sums; each regime its own test sets; the
    comparison report puts each regime's phi_mean beside every method's gain over SFT, and plots learning
    against forgetting."""
    first = {regime: json.loads((tiny_lab / regime / "data" / "train.jsonl").read_text().splitlines()[0])
             for regime in ("weak", "strong")}
    assert first["weak"]["solution"].endswith(f"#### {first['weak']['answer']}")
    assert first["strong"]["solution"] == f"The answer is {first['strong']['answer']}."
    settings = {r: json.loads((tiny_lab / r / "lab_config.json").read_text()) for r in ("weak", "strong")}
    assert list(settings["weak"]["in_domain"]) == ["chain_sum"] and list(settings["strong"]["in_domain"]) == [
        "two_terms_to_99"]
    report = tiny_lab / "report"
    table = (report / "regimes.md").read_text()
    phi = {r: json.loads((tiny_lab / r / "score" / "raw" / "summary.json").read_text())["phi_mean"]["mean"]
           for r in ("weak", "strong")}
    assert f"weak (train phi_mean {phi['weak']:+.3f}): Δ in-domain" in table
    assert f"strong (train phi_mean {phi['strong']:+.3f}): Δ out-of-domain" in table
    studies = json.loads((report / "regimes.json").read_text())
    for study in studies:  # the table's cells are each regime's own differences from SFT
        own = json.loads((tiny_lab / study["regime"] / "report" / "differences.json").read_text())
        assert study["vs_sft"] == own
        assert {r["method"] for r in study["vs_base"]} == set(METHODS)
    assert all(f"| {m} |" in table for m in METHODS if m != "sft")
    assert (report / "learning_vs_forgetting.png").read_bytes()[:4] == b"\x89PNG"
    assert 'href="../weak/report/index.html"' in (report / "index.html").read_text()


def test_learning_rates_are_chosen_on_held_out_training_problems(tiny_lab):
    """Each method with a grid is trained at every rate on the first seed and kept at the best validation accuracy
    (ties: the smaller rate); the validation problems are training problems never trained on."""
    out = tiny_lab / "weak"
    train = [json.loads(line)["question"] for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    validation = [json.loads(line)["question"] for line in (out / "data" / "validation.jsonl").read_text().splitlines()]
    assert len(train) == 24 and len(validation) == 6 and not set(train) & set(validation)
    selected = json.loads((out / "stages" / "4-select.json").read_text())["methods"]
    # the tiny grid names sft and dpo: by loss, sft_realigned and sft_rejection take sft's grid
    assert set(selected) == {"sft", "sft_realigned", "sft_rejection", "dpo"}
    runs = json.loads((out / "stages" / "5-train.json").read_text())["runs"]
    for method, choice in selected.items():
        trials = choice["trials"]
        assert [t["learning_rate"] for t in trials] == [3e-4, 1e-3]
        for t in trials:
            evaluated = json.loads((out / t["dir"] / "validation" / "eval_summary.json").read_text())
            assert evaluated["sets"]["validation"]["problems"] == 6
            assert t["validation_accuracy"] == evaluated["in_domain_accuracy"]
            trained = json.loads((out / t["dir"] / "train_summary.json").read_text())["config"]
            assert trained["learning_rate"] == t["learning_rate"] and "validation" not in trained["data"]
        best = max(t["validation_accuracy"] for t in trials)
        assert choice["learning_rate"] == min(t["learning_rate"] for t in trials if t["validation_accuracy"] == best)
        assert runs[f"{method}-seed0"]["dir"] == choice["run"]["dir"]  # the first seed's run is the chosen trial
        assert runs[f"{method}-seed0"]["learning_rate"] == choice["learning_rate"]
    assert runs["dft-seed0"]["learning_rate"] == 1e-3 and runs["dft-seed0"]["dir"] == "runs/dft-seed0"
    assert "Learning rate chosen per method on the validation split (6 training problems" in (
        out / "report" / "results.md").read_text()


def test_test_sets_are_read_only_by_the_final_evaluations(tmp_path, monkeypatch):
    """A lab whose test files and drift prompts hold no valid row until the final evaluations begin (stage 6) still
    scores, re-aligns, samples pairs and chooses learning rates: nothing before stage 6 reads them."""
    from opsft.lab.study import Lab, _gym_rows

    rows = _gym_rows("gym:chain_sum?size=8&seed=1001&min_terms=3&max_terms=3&min_digits=1&max_digits=1", "task")
    files = {name: tmp_path / f"{name}.jsonl" for name in ("in", "out", "drift")}
    for file in files.values():
        file.write_text("not JSON: reading this before stage 6 fails the lab\n")
    sets = {name: {"data": str(files[name]), "prompt_field": "question", "completion_field": "solution",
                   "answer_field": "answer"} for name in ("in", "out")}
    (tmp_path / "lab.yaml").write_text(json.dumps({
        "in_domain": {"mine": sets["in"]}, "out_of_domain": {"other": sets["out"]},
        "drift_data": {"data": str(files["drift"]), "prompt_field": "question", "completion_field": "solution"}}))
    real, opened = Lab.evaluate_all, []

    def final_evaluations(self, runs):
        assert (self.out / "stages" / "4-select.json").exists() and not (self.out / "stages" / "6-eval.json").exists()
        for file in files.values():
            file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        opened.append(True)
        return real(self, runs)

    monkeypatch.setattr(Lab, "evaluate_all", final_evaluations)
    out = tmp_path / "lab"
    assert main(["lab", "--profile", "tiny", "--config", str(tmp_path / "lab.yaml"), "--regimes", "weak",
                 "--methods", "sft", "dpo", "--out", str(out), "--no-progress"]) == 0
    assert opened == [True]
    selected = json.loads((out / "stages" / "4-select.json").read_text())["methods"]
    assert set(selected) == {"sft", "dpo"} and all(len(m["trials"]) == 2 for m in selected.values())
    base = json.loads((out / "eval" / "base" / "eval_summary.json").read_text())
    assert base["sets"]["mine"]["problems"] == 8 and base["drift"]["samples"] == 8


def test_rerun_reuses_every_stage(tiny_lab, capsys):
    import yaml

    suite = tiny_lab / "weak" / "data" / "suite.yaml"
    written = yaml.safe_load(suite.read_text())
    suite.write_text(yaml.safe_dump({k: v for k, v in written.items() if k != "drift"}))  # as an older opsft wrote it
    assert lab(tiny_lab) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, reused") == 2 * 7 and "| sft | 1 |" in printed and "Gain over SFT" in printed
    assert yaml.safe_load(suite.read_text()) == written


@pytest.mark.parametrize("target, dies_at, stage", [
    ("opsft.commands.score.run_score", 1, "2/7 score"), ("opsft.commands.realign.run_realign", 1, "3/7 realign"),
    ("opsft.commands.eval.run_eval", 1, "4/7 select"), ("opsft.commands.train.run_train", 7, "5/7 train"),
    ("opsft.commands.eval.run_eval", 7, "6/7 eval")])
def test_killed_lab_continues_from_the_interrupted_stage(tmp_path, monkeypatch, capsys, target, dies_at, stage):
    """sft and sft_realigned each choose between two rates (4 trainings and 4 validations in stage 4), then stage 5
    trains the 4 other runs (idft's two seeds, the second seed of the others), stage 6 evaluates the base and 6 runs."""
    import importlib

    module_name, function = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real, calls = getattr(module, function), []

    def dies(config, **kwargs):
        calls.append(config)
        if len(calls) == dies_at:
            raise KeyboardInterrupt
        return real(config, **kwargs)

    arguments = ("--regimes", "weak", "--methods", "sft", "idft", "sft_realigned", "--seeds", "0", "1")
    monkeypatch.setattr(module, function, dies)
    assert lab(tmp_path, *arguments) == 130  # interrupted
    monkeypatch.setattr(module, function, lambda config, **kwargs: (calls.append(config), real(config, **kwargs))[1])
    before = len(calls)
    capsys.readouterr()
    assert lab(tmp_path, *arguments) == 0
    printed = capsys.readouterr().out
    assert f"[lab weak] stage {stage} ..." in printed
    for earlier in range(1, int(stage[0])):
        assert f"[lab weak] stage {earlier}/7" in printed and "done earlier, reused" in printed
    if function == "run_train":  # the six finished trainings (four in stage 4, two in stage 5) are not redone
        assert len(calls) - before == 2
    assert (tmp_path / "report" / "results.md").exists()


def test_lab_on_your_own_model_and_files(tmp_path, capsys):
    """Every default replaced: a local model directory, JSONL files with their own column names, sets from YAML."""
    from opsft.inputs.tiny import build_tiny_model
    from opsft.lab.study import _gym_rows

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
    # the tiny profile chooses sft's learning rate: 6 of the 10 rows are held out, in the file's own columns
    assert json.loads((out / "stages" / "1-data.json").read_text())["train"] == str(out / "data" / "train.jsonl")
    held_out = [json.loads(line) for line in (out / "data" / "validation.jsonl").read_text().splitlines()]
    assert len(held_out) == 6 and all(set(r) == {"q", "work", "final"} for r in held_out)
    assert json.loads((out / "score" / "raw" / "summary.json").read_text())["n_examples"] == 4
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
    from opsft.commands.eval import EvalConfig, eval_sets
    from opsft.lab.study import LabConfig, eval_suite

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
    from opsft.lab.methods import method_spec
    from opsft.lab.study import LabConfig
    from opsft.runtime.errors import OpsftError

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

    from opsft.inputs.data import load_examples

    out = tiny_lab / "weak"
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
    validation = {json.loads(line)["question"] for line in (out / "data" / "validation.jsonl").read_text().splitlines()}
    assert not validation & {row["question"] for row in rows}  # nor a validation problem


def test_learning_rate_grids_and_regimes_are_checked_before_anything_runs():
    from opsft.lab.study import LabConfig, validation_split
    from opsft.runtime.errors import OpsftError

    with pytest.raises(OpsftError, match="needs a validation split"):
        LabConfig(profile="quick", learning_rates=[1e-4, 3e-4])
    assert LabConfig(profile="quick", learning_rates=[1e-4]).resolved()["learning_rates"] == [1e-4]  # no choice
    with pytest.raises(OpsftError, match="keys are methods of this lab, losses or 'default'"):
        LabConfig(profile="full", learning_rates={"sfft": [1e-4, 3e-4]})
    with pytest.raises(OpsftError, match="each grid is a list of positive numbers"):
        LabConfig(profile="full", learning_rates={"dft": [1e-4, -3e-4]})
    with pytest.raises(OpsftError, match="each grid is a list of positive numbers"):
        LabConfig(profile="full", learning_rates=[0.0, 1e-4])
    with pytest.raises(OpsftError, match="replace the embedded study's data: give one regime"):
        LabConfig(profile="full", regimes=["weak", "strong"], train_data="mine.jsonl")
    assert LabConfig(profile="full", train_data="mine.jsonl").regime_names() == ["weak"]
    with pytest.raises(OpsftError, match="unknown regimes 'medium'"):
        LabConfig(regimes=["medium"])
    held_out = validation_split(100, 10, "data.jsonl")
    assert len(held_out) == 10 and held_out == validation_split(100, 10, "data.jsonl") and max(held_out) < 100
    with pytest.raises(OpsftError, match="has 10 rows; hold out fewer"):
        validation_split(10, 10, "data.jsonl")


def test_the_full_profiles_lora_grid_becomes_a_full_fine_tuning_grid_without_lora():
    from opsft.lab.study import FULL_FINE_TUNING_GRID, PROFILES, LabConfig

    assert LabConfig(profile="full").resolved()["learning_rates"] == PROFILES["full"]["learning_rates"]
    assert LabConfig(profile="full", lora=False).resolved()["learning_rates"] == FULL_FINE_TUNING_GRID
    assert LabConfig(profile="full", lora=False, learning_rates=[1e-3, 2e-3]).resolved()["learning_rates"] == [
        1e-3, 2e-3]


def test_an_iterative_run_with_an_empty_round_under_skip_is_recorded_as_skipped_and_the_lab_goes_on(tmp_path):
    """The tiny model answers no training problem correctly, so under fallback skip round 1 has nothing to train on:
    `opsft iterate` refuses (its own test), and the lab records those runs as skipped with the reason, both where
    the method's learning rate is chosen (sft's grid of two) and where it is not (idft's one rate)."""
    out = tmp_path / "lab"
    methods = ["sft", "sft_iterative_skip@rejection", "idft_iterative_skip@rejection"]
    assert lab(out, "--regimes", "weak", "--methods", *methods, "--iterate-rounds", "1") == 0
    selected = json.loads((out / "stages" / "4-select.json").read_text())["methods"]
    assert "round 1: no problem" in selected["sft_iterative_skip@rejection"]["skipped"]
    runs = json.loads((out / "stages" / "5-train.json").read_text())["runs"]
    for method in methods[1:]:
        assert "round 1: no problem" in runs[f"{method}-seed0"]["skipped"]
    rows = {r["method"]: r for r in json.loads((out / "report" / "results.json").read_text())}
    assert rows["sft"]["seeds"] == 1 and not rows["sft"]["note"]
    for method in methods[1:]:
        assert rows[method]["seeds"] == 0 and "--fallback skip leaves nothing to train on" in rows[method]["note"]


def test_iterative_methods_run_their_rounds_at_their_counterparts_rate(tmp_path):
    """LOSS_iterative@SOURCE: `opsft iterate` over the lab's training problems with the lab's token budget, at the
    learning rate chosen for its single-round counterpart (LOSS on SOURCE's data made once), evaluated like the rest."""
    from opsft.lab.methods import method_spec

    assert method_spec("sft_iterative@rejection") == ("sft", "iterative:rejection")
    assert method_spec("idft_iterative_skip@realign+rejection") == ("idft", "iterative-skip:realign+rejection")
    with pytest.raises(Exception, match="LOSS_iterative@SOURCE"):
        method_spec("sft_iterative@raw")
    out = tmp_path / "lab"
    methods = ["sft", "sft_rejection", "sft_iterative@rejection", "idft_iterative@realign"]
    assert lab(out, "--regimes", "weak", "--methods", *methods, "--iterate-rounds", "2") == 0
    selected = json.loads((out / "stages" / "4-select.json").read_text())["methods"]
    assert set(selected) == {"sft", "sft_rejection"}  # the iterative methods search no grid of their own
    runs = json.loads((out / "stages" / "5-train.json").read_text())["runs"]
    iterated = runs["sft_iterative@rejection-seed0"]
    assert iterated["learning_rate"] == selected["sft_rejection"]["learning_rate"]
    assert runs["idft_iterative@realign-seed0"]["learning_rate"] == 1e-3  # no counterpart: the profile's rate
    for name in ("sft_iterative@rejection-seed0", "idft_iterative@realign-seed0"):
        rounds = [json.loads(line) for line in (out / runs[name]["dir"] / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [1, 2] and rounds[0]["model"] == str(out / "data" / "tiny-model")
        assert (out / runs[name]["dir"] / "eval" / "eval_summary.json").exists()
        total = sum(r["train"]["train_tokens"] for r in rounds)
        rows = {r["method"]: r for r in json.loads((out / "report" / "results.json").read_text())}
        assert rows[runs[name]["method"]]["train_tokens"][0] == total > 0
