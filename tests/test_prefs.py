"""`opsft prefs` (pairs from the model's own checked samples) and the DPO / SimPO baselines on TRL."""

from __future__ import annotations

import copy
import json

import datasets
import pytest
from conftest import launch

from opsft.cli import main
from opsft.engine.preference_pairs import make_pairs
from opsft.engine.preference_training import fit_pairs
from opsft.inputs.data import load_preferences

ROWS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(4) for b in range(3)]


def s(text, correct):
    return {"text": text, "correct": correct}


@pytest.mark.parametrize("samples, rule, pairs, reason", [
    ([s("4", True), s("5", False), s("6", False)], "sample_or_reference", [("4", "5")], None),
    ([s("5", False), s("6", False)], "sample_or_reference", [("REF", "5")], None),
    ([s("5", False), s("6", False)], "sample", [], "no_correct_sample"),
    ([s("4", True), s("5", False)], "reference", [("REF", "5")], None),
    ([s("4", True), s("4.0", True)], "sample_or_reference", [], "all_samples_correct"),
])
def test_make_pairs(samples, rule, pairs, reason):
    made, why = make_pairs(samples, "REF", rule, max_pairs=1)
    assert [(p["chosen"], p["rejected"]) for p in made] == pairs and why == reason


def test_several_pairs_per_prompt_use_distinct_samples():
    made, _ = make_pairs([s("a", True), s("b", True), s("x", False), s("y", False), s("z", False)], "R",
                         "sample", max_pairs=3)
    assert [(p["chosen"], p["rejected"]) for p in made] == [("a", "x"), ("b", "y"), ("a", "z")]


def prefs_flags(model_dir, data) -> list[str]:
    return ["--model", str(model_dir), "--data", str(data), "--prompt-field", "question", "--completion-field",
            "answer", "--k", "3", "--max-new-tokens", "8", "--no-progress"]


@pytest.fixture(scope="module")
def prefs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("prefs")
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert main(["prefs", *prefs_flags(tiny_model_dir, data), "--out", str(root / "out")]) == 0
    return root / "out"


def test_prefs_writes_trl_pairs_and_counts_every_prompt(prefs):
    pairs = [json.loads(line) for line in (prefs / "prefs.jsonl").read_text().splitlines()]
    summary = json.loads((prefs / "summary.json").read_text())
    assert summary["prompts"] == len(ROWS) and summary["samples"] == 3 * len(ROWS)
    assert summary["prompts_with_pairs"] + sum(summary["prompts_without_pair"].values()) == len(ROWS)
    assert summary["pairs"] == len(pairs) > 0
    checked = {r["row"]: r for r in map(json.loads, (prefs / "samples.jsonl").read_text().splitlines())}
    for pair in pairs:
        assert pair["prompt"] == [{"role": "user", "content": ROWS[pair["source_row"] - 1]["question"]}]
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
        wrong = {x["text"] for x in checked[pair["source_row"]]["samples"] if not x["correct"]}
        assert pair["rejected"][0]["content"] in wrong


def test_two_processes_make_the_pairs_of_one_and_resume_with_another_count(tmp_path, tiny_model_dir, prefs):
    """`accelerate launch` with 2 CPU processes: each samples its share (index % 2), the main process merges and
    pairs. Every sample draws from its own seeded generator, so the files equal one process's, also when a run
    cut short in one process is finished by two, then reread by one."""
    flags = prefs_flags(tiny_model_dir, prefs.parent / "d.jsonl")

    def outputs(out):
        summary = json.loads((out / "summary.json").read_text())
        return (out / "prefs.jsonl").read_text(), (out / "samples.jsonl").read_text(), \
            {k: v for k, v in summary.items() if k != "run"}

    one = outputs(prefs)
    launch(2, "prefs", *flags, "--out", str(tmp_path / "two"))
    assert sorted(p.name for p in (tmp_path / "two").glob("progress*")) == ["progress-0-of-2.jsonl",
                                                                           "progress-1-of-2.jsonl"]
    assert outputs(tmp_path / "two") == one
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "progress.jsonl").write_text("\n".join((prefs / "progress.jsonl").read_text().splitlines()[:6]) + "\n")
    launch(2, "prefs", *flags, "--out", str(partial))
    logged = [json.loads(line)["index"] for p in sorted(partial.glob("progress*.jsonl"))
              for line in p.read_text().splitlines()[1:]]
    assert sorted(logged) == list(range(len(ROWS)))  # 5 prompts by one process, the other 7 by two
    assert outputs(partial) == one
    assert main(["prefs", *flags, "--out", str(partial)]) == 0
    assert outputs(partial) == one


def train(tmp_path, model_dir, prefs, loss, *extra):
    out = tmp_path / loss
    assert main(["train", "--model", str(model_dir), "--data", str(prefs / "prefs.jsonl"), "--loss", loss,
                 "--output-dir", str(out), "--logging-steps", "1", "--no-progress", *extra]) == 0
    return json.loads((out / "train_summary.json").read_text())


def test_dpo_reward_margin_increases_over_a_short_run(tmp_path, tiny_model_dir, prefs):
    summary = train(tmp_path, tiny_model_dir, prefs, "dpo", "--max-steps", "8", "--per-device-train-batch-size",
                    "12", "--learning-rate", "3e-4", "--lr-scheduler-type", "constant")
    margins = [h["rewards/margins"] for h in summary["log_history"] if "rewards/margins" in h]
    assert len(margins) == 8 and margins[0] == pytest.approx(0, abs=1e-5)  # policy = reference at step 0
    assert margins[-1] > margins[0] + 1.0
    assert all(b > a for a, b in zip(margins, margins[1:]))  # one full batch: the margin rises step by step
    assert summary["method"] == "dpo" and summary["steps"] == 8 and summary["train_tokens"] > 0


@pytest.mark.parametrize("lora", [False, True])
def test_simpo_trains_through_trls_cpo_trainer(tmp_path, tiny_model_dir, prefs, lora):
    summary = train(tmp_path, tiny_model_dir, prefs, "simpo", "--max-steps", "2", "--per-device-train-batch-size",
                    "4", *(["--lora"] if lora else []))
    assert summary["config"]["simpo_beta"] == 2.0 and summary["config"]["simpo_gamma"] == 1.0
    logged = [h for h in summary["log_history"] if "rewards/margins" in h]
    assert logged and all(h["nll_loss"] == 0 for h in logged)  # cpo_alpha 0: no NLL term
    assert (tmp_path / "simpo" / "final" / ("adapter_config.json" if lora else "config.json")).exists()


def test_bad_preference_rows_name_the_row(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" +
                    json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--loss", "dpo", "--max-steps", "1",
                 "--output-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "p.jsonl: row 2: field 'rejected': is missing" in capsys.readouterr().err


def test_pair_token_counts_are_the_tokens_trls_dpo_trainer_trains_on(tmp_path, tokenizer, tiny_model):
    from trl import DPOConfig, DPOTrainer

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (
        {"prompt": [{"role": "user", "content": "What is 2 + 3?"}],
         "chosen": [{"role": "assistant", "content": "2 + 3 = 5. #### 5"}],
         "rejected": [{"role": "assistant", "content": "6"}]},
        {"prompt": [{"role": "user", "content": "Solve the problem step by step: 17 + 25"}],
         "chosen": [{"role": "assistant", "content": "First add 17 and 25. The answer is 42."}],
         "rejected": [{"role": "assistant", "content": "The answer is 41, then check the sum."}]})))
    rows, _ = load_preferences(str(path))
    kept, mean_tokens, truncated = fit_pairs(rows, tokenizer, max_length=38, source=str(path))
    args = DPOConfig(output_dir=str(tmp_path / "o"), report_to="none", max_length=None, bf16=False, use_cpu=True)
    trainer = DPOTrainer(model=tiny_model, ref_model=copy.deepcopy(tiny_model), processing_class=tokenizer, args=args,
                         train_dataset=datasets.Dataset.from_list(
                             [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]))
    trl_tokens = [2 * len(t["prompt_ids"]) + len(t["chosen_ids"]) + len(t["rejected_ids"])
                  for t in trainer.train_dataset]
    assert kept == rows and mean_tokens == sum(trl_tokens) / 2
    assert truncated == sum(max(len(t["chosen_ids"]), len(t["rejected_ids"])) + len(t["prompt_ids"]) > 38
                            for t in trainer.train_dataset) == 1


def test_a_pair_whose_prompt_fills_max_length_is_an_error_or_counted(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "2 + 3 =", "chosen": "5", "rejected": "6"}) + "\n" +
                    json.dumps({"prompt": "hello world " * 30, "chosen": "5", "rejected": "6"}) + "\n")
    args = ["train", "--model", str(tiny_model_dir), "--data", str(data), "--loss", "dpo", "--max-steps", "1",
            "--max-length", "32", "--output-dir", str(tmp_path / "o"), "--no-progress"]
    assert main(args) == 2
    assert "p.jsonl: row 2: field 'prompt': is " in capsys.readouterr().err
    assert main([*args, "--skip-invalid"]) == 0
    summary = json.loads((tmp_path / "o" / "train_summary.json").read_text())
    assert summary["examples"] == 1 and summary["skipped"] == {"prompt_too_long": 1}


def test_prefs_checks_prompt_length(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2] + [{"question": "hello world " * 30,
                                                                        "answer": "1"}]))
    args = ["prefs", "--model", str(tiny_model_dir), "--data", str(data), "--prompt-field", "question",
            "--completion-field", "answer", "--k", "2", "--max-new-tokens", "8", "--max-length", "40",
            "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "d.jsonl: row 3: field 'prompt': prompt of " in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--skip-invalid"]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["prompts"] == 2 and summary["skipped_input"] == {"prompt_too_long": 1}


def test_prefs_rejects_bad_options(tmp_path, tiny_model_dir, capsys):
    for flag, value, message in (("--k", "0", "--k must be >= 1"), ("--temperature", "0", "--temperature must be > 0")):
        assert main(["prefs", "--model", str(tiny_model_dir), "--data", "x.jsonl", flag, value]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_prefs_then_dpo_and_simpo_with_lora(tmp_path):
    assert main(["prefs", "--model", "smollm2-135m", "--data", "gym:basic_arithmetic?size=4&seed=0",
                 "--out", str(tmp_path / "prefs"), "--k", "2", "--max-new-tokens", "32", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "prefs" / "summary.json").read_text())
    assert summary["samples"] == 8 and summary["pairs"] > 0
    for loss in ("dpo", "simpo"):
        result = train(tmp_path, "smollm2-135m", tmp_path / "prefs", loss, "--lora", "--max-steps", "2",
                       "--per-device-train-batch-size", "2")
        assert result["steps"] == 2 and len([h for h in result["log_history"] if "rewards/margins" in h]) == 2


def test_a_killed_dpo_run_resumes_with_its_whole_token_count(tmp_path, tiny_model_dir, prefs):
    from transformers import TrainerCallback

    from opsft.commands.train import TrainConfig, run_train

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    def config(out, **extra):
        return TrainConfig(model=str(tiny_model_dir), data=str(prefs / "prefs.jsonl"), loss="dpo", max_steps=4,
                           save_steps=2, per_device_train_batch_size=2, logging_steps=1, progress=False,
                           output_dir=str(out), **extra)

    whole = run_train(config(tmp_path / "whole"))
    with pytest.raises(KeyboardInterrupt):
        run_train(config(tmp_path / "killed"), callbacks=[StopAt()])
    resumed = run_train(config(tmp_path / "killed", resume=True))
    assert resumed["train_tokens_source"] == "trl num_tokens"
    assert resumed["train_tokens"] == whole["train_tokens"] > 0


def test_preference_pairs_on_a_dataset_are_the_prefs_commands_pairs(prefs, tiny_model, tokenizer):
    """opsft.preference_pairs on a datasets.Dataset and a loaded model gives prefs.jsonl's pairs and summary."""
    from opsft import preference_pairs

    pairs, summary = preference_pairs(tiny_model, datasets.Dataset.from_list(ROWS), processing_class=tokenizer,
                                      prompt_field="question", completion_field="answer", k=3, max_new_tokens=8,
                                      progress=False)
    written = [json.loads(line) for line in (prefs / "prefs.jsonl").read_text().splitlines()]
    assert written and pairs.to_list() == written
    command = json.loads((prefs / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "run"} == {k: v for k, v in command.items() if k != "run"}
    assert set(command["run"]) - set(summary["run"]) == {"out", "overwrite"}
    assert summary["run"]["data"] == "the dataset" and summary["run"]["k"] == 3
