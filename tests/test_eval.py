"""`opsft eval` end to end on the tiny model: outputs, sampling, adapters, resume, drift, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import launch, make_tokenizer

from opsft.cli import main

ROWS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(6) for b in range(3)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_eval(model, out, data, *extra):
    return main(["eval", "--model", str(model), "--data", data, "--out", str(out), "--prompt-field", "question",
                 "--completion-field", "answer", "--max-new-tokens", "10", "--batch-size", "8", "--no-progress",
                 *extra])


def samples(out, name="d"):
    return [json.loads(line) for line in (out / "sets" / name / "samples.jsonl").read_text().splitlines()]


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", ROWS)


def test_greedy_eval_writes_audit_trail_and_summary(tmp_path, tiny_model_dir, data, capsys):
    assert run_eval(tiny_model_dir, tmp_path / "out", data) == 0
    rows = samples(tmp_path / "out")
    assert [r["row"] for r in rows] == list(range(1, len(ROWS) + 1))
    for row, source in zip(rows, ROWS):
        (sample,) = row["samples"]
        assert row["reference"] == source["answer"] and row["prompt"][0]["content"] == source["question"]
        assert set(sample) == {"text", "answer", "correct", "finish_reason", "n_tokens"}
    summary = json.loads((tmp_path / "out" / "eval_summary.json").read_text())
    result = summary["sets"]["d"]
    assert result["problems"] == len(ROWS) and result["samples_per_problem"] == 1
    assert result["accuracy"] == sum(r["samples"][0]["correct"] for r in rows) / len(ROWS)
    assert result["accuracy_ci95"][0] <= result["accuracy"] <= result["accuracy_ci95"][1]
    assert summary["in_domain_accuracy"] == result["accuracy"] and summary["out_of_domain_accuracy"] is None
    assert "| d | in-domain | 18 | 1 |" in capsys.readouterr().out


def test_sampled_eval_is_reproducible_and_independent_of_the_batch_size(tmp_path, tiny_model_dir, data):
    sampled = ["--k", "3", "--temperature", "1.0"]
    assert run_eval(tiny_model_dir, tmp_path / "a", data, *sampled) == 0
    assert run_eval(tiny_model_dir, tmp_path / "b", data, *sampled, "--batch-size", "5") == 0
    assert run_eval(tiny_model_dir, tmp_path / "c", data, *sampled, "--seed", "1") == 0
    texts = {name: [[s["text"] for s in r["samples"]] for r in samples(tmp_path / name)] for name in "abc"}
    assert texts["a"] == texts["b"] and texts["a"] != texts["c"]
    assert all(len(set(t)) > 1 for t in texts["a"][:3])  # k different samples per problem
    summary = json.loads((tmp_path / "a" / "eval_summary.json").read_text())["sets"]["d"]
    correct = [[s["correct"] for s in r["samples"]] for r in samples(tmp_path / "a")]
    assert summary["accuracy"] == pytest.approx(sum(map(sum, correct)) / (3 * len(ROWS)))
    assert summary["pass@3"] == pytest.approx(sum(any(c) for c in correct) / len(ROWS))


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, tiny_model_dir):
    """A LoRA adapter on the tiny model (non-zero B, so it changes the outputs) and the merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(root / "adapter")
    peft_model.merge_and_unload().save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "merged")
    return root / "adapter", root / "merged"


def test_lora_adapter_evaluates_like_the_merged_model(tmp_path, tiny_model_dir, adapter_dirs, data):
    adapter, merged = adapter_dirs
    assert run_eval(adapter, tmp_path / "adapter", data) == 0  # the adapter directory alone
    assert run_eval(tiny_model_dir, tmp_path / "base+adapter", data, "--adapter", str(adapter)) == 0
    assert run_eval(merged, tmp_path / "merged", data) == 0
    assert run_eval(tiny_model_dir, tmp_path / "base", data) == 0
    outputs = {name: [r["samples"][0]["text"] for r in samples(tmp_path / name)]
               for name in ("adapter", "base+adapter", "merged", "base")}
    assert outputs["adapter"] == outputs["base+adapter"] == outputs["merged"]
    assert outputs["adapter"] != outputs["base"]  # the adapter is really applied
    accuracy = {name: json.loads((tmp_path / name / "eval_summary.json").read_text())["sets"]["d"]["accuracy"]
                for name in outputs}
    assert accuracy["adapter"] == accuracy["merged"]


def test_interrupted_eval_resumes_without_regenerating(tmp_path, tiny_model_dir, data, monkeypatch):
    import opsft.engine.evaluation

    assert run_eval(tiny_model_dir, tmp_path / "out", data, "--k", "2", "--temperature", "1.0") == 0
    complete = samples(tmp_path / "out")
    log = tmp_path / "out" / "sets" / "d" / "progress.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:5]) + "\n" + lines[5][:30])  # 4 problems done, killed while writing
    generated = []
    real_sample = opsft.engine.evaluation.sample

    def counting(model, prompts, *args, **kwargs):
        generated.append(len(prompts))
        return real_sample(model, prompts, *args, **kwargs)

    monkeypatch.setattr(opsft.engine.evaluation, "sample", counting)
    assert run_eval(tiny_model_dir, tmp_path / "out", data, "--k", "2", "--temperature", "1.0") == 0
    assert sum(generated) == 2 * (len(ROWS) - 4)
    assert samples(tmp_path / "out") == complete


def test_two_processes_evaluate_like_one_and_resume_with_another_count(tmp_path, tiny_model_dir, data, monkeypatch):
    """`accelerate launch` with 2 CPU processes: each samples its share (index % 2) of the set and of the drift
    samples, the main process merges, scores the drift and reports. Every sample draws from its own seeded
    generator, so the samples equal one process's; the drift to fp32 round-off (other batch neighbours). A run
    cut short in one process is finished by two, then reread whole by one without generating again."""
    flags = ["--model", str(tiny_model_dir), "--data", data, "--prompt-field", "question", "--completion-field",
             "answer", "--max-new-tokens", "10", "--batch-size", "4", "--no-progress", "--k", "2", "--temperature",
             "1.0", "--drift-data", data, "--drift-base", str(tiny_model_dir), "--drift-samples", "2",
             "--drift-limit", "9", "--drift-max-new-tokens", "8"]

    def outputs(out):
        summary = json.loads((out / "eval_summary.json").read_text())
        base = sorted((r for p in (out / "drift").glob("base_samples*.jsonl") for r in
                       map(json.loads, p.read_text().splitlines()[1:])), key=lambda r: r["index"])
        return samples(out), summary, base

    def same(a, b):
        (samples_a, summary_a, base_a), (samples_b, summary_b, base_b) = a, b
        assert samples_a == samples_b and base_a == base_b and len(base_a) == 18
        assert summary_a["sets"] == summary_b["sets"]
        drift_a, drift_b = summary_a["drift"], summary_b["drift"]
        assert {k: v for k, v in drift_a.items() if "phi" not in k and "drift" not in k} == \
               {k: v for k, v in drift_b.items() if "phi" not in k and "drift" not in k}
        for key in ("drift", "drift_sem", "token_phi_mean"):
            assert drift_a[key] == pytest.approx(drift_b[key], rel=1e-5, abs=1e-6), key

    assert main(["eval", *flags, "--out", str(tmp_path / "one")]) == 0
    one = outputs(tmp_path / "one")
    launch(2, "eval", *flags, "--out", str(tmp_path / "two"))
    assert sorted(p.name for p in (tmp_path / "two").rglob("*-of-2.jsonl")) == [
        "base_samples-0-of-2.jsonl", "base_samples-1-of-2.jsonl", "progress-0-of-2.jsonl", "progress-1-of-2.jsonl"]
    same(outputs(tmp_path / "two"), one)
    # cut short in one process (5 of 18 problems, 7 of 18 drift samples logged), finished by two, reread by one
    partial = tmp_path / "partial"
    for log, keep in (("sets/d/progress.jsonl", 6), ("drift/base_samples.jsonl", 8)):
        (partial / log).parent.mkdir(parents=True)
        (partial / log).write_text("\n".join((tmp_path / "one" / log).read_text().splitlines()[:keep]) + "\n")
    launch(2, "eval", *flags, "--out", str(partial))
    logged = [json.loads(line)["index"] for p in sorted((partial / "sets" / "d").glob("progress*.jsonl"))
              for line in p.read_text().splitlines()[1:]]
    assert sorted(logged) == list(range(len(ROWS)))  # nothing generated twice
    same(outputs(partial), one)
    import opsft.engine.drift
    import opsft.engine.evaluation

    def no_sampling(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(opsft.engine.evaluation, "sample", no_sampling)
    monkeypatch.setattr(opsft.engine.drift, "sample", no_sampling)
    assert main(["eval", *flags, "--out", str(partial)]) == 0
    same(outputs(partial), one)


def test_suite_with_in_and_out_of_domain_sets(tmp_path, tiny_model_dir, data):
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": f"Say {i}", "completion": str(i)} for i in range(5)])
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "in_domain": {"adds": {"data": data, "prompt_field": "question", "completion_field": "answer"}},
        "out_of_domain": {"say": "other.jsonl", "say_sampled": {"data": other, "k": 2, "temperature": 1.0}},
        "drift": {"data": "d.jsonl", "base": str(tiny_model_dir), "prompt_field": "question",
                  "completion_field": "answer", "limit": 3},
    }))
    assert main(["eval", "--model", str(tiny_model_dir), "--suite", str(suite), "--out", str(tmp_path / "out"),
                 "--max-new-tokens", "6", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "eval_summary.json").read_text())
    assert {k: v["group"] for k, v in summary["sets"].items()} == {
        "adds": "in_domain", "say": "out_of_domain", "say_sampled": "out_of_domain"}
    assert summary["sets"]["say_sampled"]["samples_per_problem"] == 2
    assert summary["out_of_domain_accuracy"] == pytest.approx(
        (summary["sets"]["say"]["accuracy"] + summary["sets"]["say_sampled"]["accuracy"]) / 2)
    assert summary["drift"]["samples"] == 3 and summary["drift"]["data"] == data  # found beside the suite


def drift_of(tmp_path, model, base, data, name):
    assert run_eval(model, tmp_path / name, data, "--drift-data", data, "--drift-base", str(base),
                    "--drift-samples", "4", "--drift-limit", "18", "--drift-max-new-tokens", "16",
                    "--limit", "2") == 0
    return json.loads((tmp_path / name / "eval_summary.json").read_text())["drift"]


def test_drift_is_zero_for_the_base_and_grows_over_fine_tuning(tmp_path, tiny_model_dir, data):
    from opsft.commands.train import TrainConfig, run_train

    train = write_jsonl(tmp_path / "train.jsonl",
                        [{"question": r["question"], "answer": f"It is {r['answer']}. #### {r['answer']}"}
                         for r in ROWS])
    run_train(TrainConfig(model=str(tiny_model_dir), data=train, prompt_field="question", completion_field="answer",
                          output_dir=str(tmp_path / "run"), max_steps=12, save_steps=3, learning_rate=1e-3,
                          lr_scheduler_type="constant", per_device_train_batch_size=6, progress=False,
                          logging_steps=100))
    self_drift = drift_of(tmp_path, tiny_model_dir, tiny_model_dir, data, "self")
    assert self_drift["samples"] == 72
    assert abs(self_drift["drift"]) < 3 * self_drift["drift_sem"]
    early = drift_of(tmp_path, tmp_path / "run" / "checkpoint-3", tiny_model_dir, data, "early")
    late = drift_of(tmp_path, tmp_path / "run" / "final", tiny_model_dir, data, "late")
    assert early["drift"] < self_drift["drift"] - 3 * early["drift_sem"]
    assert late["drift"] < early["drift"] - 3 * late["drift_sem"]


@pytest.fixture(scope="module")
def no_template_dir(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("no-template")
    tiny_model.save_pretrained(path)
    make_tokenizer(chat_template=None).save_pretrained(path)
    return path


def test_bad_input_fails_with_a_clear_message(tmp_path, tiny_model_dir, no_template_dir, adapter_dirs, data, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"in_domain": {"mine": "missing.jsonl"}}))
    assert main(["eval", "--model", str(tiny_model_dir), "--suite", str(suite), "--out", str(tmp_path / "o")]) == 2
    assert "suite.yaml: in_domain.mine: data file missing.jsonl does not exist" in capsys.readouterr().err
    suite.write_text(yaml.safe_dump({"in_domain": {"mine": data}, "drift": {"data": data, "k": 2}}))
    assert main(["eval", "--model", str(tiny_model_dir), "--suite", str(suite), "--out", str(tmp_path / "o")]) == 2
    assert "suite.yaml: drift: expected a mapping of data, base, prompt_field" in capsys.readouterr().err

    assert run_eval(no_template_dir, tmp_path / "o", data) == 2
    assert "has no chat template and no --prompt-format was given" in capsys.readouterr().err
    assert run_eval(no_template_dir, tmp_path / "plain", data, "--prompt-format", "plain") == 0
    assert json.loads((tmp_path / "plain" / "eval_summary.json").read_text())["prompt_format"] == "plain"

    assert run_eval(tiny_model_dir, tmp_path / "o", data, "--k", "0") == 2
    assert "k must be >= 1 (got 0)" in capsys.readouterr().err
    assert run_eval(tiny_model_dir, tmp_path / "o", data, "--k", "4") == 2
    assert "greedy decoding (temperature 0) gives one answer per problem" in capsys.readouterr().err

    adapter, _ = adapter_dirs
    assert run_eval(no_template_dir, tmp_path / "o", data, "--adapter", str(adapter)) == 2
    assert f"adapter '{adapter}' was trained on base model '{tiny_model_dir}', not '{no_template_dir}'" in \
        capsys.readouterr().err
    assert run_eval(tiny_model_dir, tmp_path / "o", data, "--drift-data", data) == 2
    assert "the drift measure needs the base model: pass --drift-base" in capsys.readouterr().err


def test_skipped_drift_prompts_are_counted_in_the_summary(tmp_path, tiny_model_dir, data, capsys):
    """13 drift rows: 4 usable, 9 bad in four ways; every one of them is in the summary with its reason."""
    bad = ['{"question": "What is 1 + 1?"', "[1, 2]", json.dumps({"question": "x"}),
           json.dumps({"question": "long " * 300, "answer": "1"})]
    lines = [json.dumps(r) for r in ROWS[:4]] + [bad[0]] * 2 + [bad[1]] * 2 + [bad[2]] * 2 + [bad[3]] * 3
    drift = tmp_path / "drift.jsonl"
    drift.write_text("\n".join(lines) + "\n")
    drift = str(drift)
    extra = ["--drift-data", drift, "--drift-base", str(tiny_model_dir), "--drift-limit", "100", "--max-length", "400",
             "--drift-max-new-tokens", "16"]
    assert run_eval(tiny_model_dir, tmp_path / "o", data, *extra) == 2
    assert "drift.jsonl: row 5: malformed JSON" in capsys.readouterr().err
    assert run_eval(tiny_model_dir, tmp_path / "o", data, *extra, "--skip-invalid") == 0
    drift_summary = json.loads((tmp_path / "o" / "eval_summary.json").read_text())["drift"]
    assert drift_summary["rows_read"] == 13 and drift_summary["prompts"] == 4 and drift_summary["samples"] <= 4
    assert drift_summary["skipped"] == {"malformed_json": 2, "not_an_object": 2, "missing_field": 2,
                                        "prompt_too_long": 3}
    skipped = (tmp_path / "o" / "drift" / "skipped.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["row"] for line in skipped) == list(range(5, 14))
    assert drift_summary["samples"] + drift_summary["empty_samples"] == 4


def test_evaluate_on_a_dataset_is_the_eval_commands_set(tmp_path, tiny_model_dir, tiny_model, tokenizer, data):
    """opsft.evaluate on a datasets.Dataset (from the model's directory, and a loaded model) gives opsft eval's
    samples and set summary; its defaults are the command's."""
    import dataclasses
    import inspect

    import datasets

    from opsft import evaluate
    from opsft.commands.eval import EvalConfig

    assert run_eval(tiny_model_dir, tmp_path / "out", data, "--k", "2", "--temperature", "0.8") == 0
    result = json.loads((tmp_path / "out" / "eval_summary.json").read_text())["sets"]["d"]
    fields = dict(prompt_field="question", completion_field="answer", max_new_tokens=10, batch_size=8, k=2,
                  temperature=0.8, progress=False)
    for model, tok in ((str(tiny_model_dir), None), (tiny_model, tokenizer)):
        problems, summary = evaluate(model, datasets.Dataset.from_list(ROWS), processing_class=tok, **fields)
        assert problems.to_list() == samples(tmp_path / "out")
        assert summary == {k: v for k, v in result.items()
                           if k not in ("group", "data", "temperature", "top_p", "max_new_tokens")}
    defaults = {f.name: f.default for f in dataclasses.fields(EvalConfig)}
    options = {n: p.default for n, p in inspect.signature(evaluate).parameters.items() if p.kind == p.KEYWORD_ONLY}
    assert set(options) - set(defaults) == {"processing_class"}  # every other option is one of opsft eval's
    assert all(options[name] == defaults[name] for name in options if name != "processing_class")
    with pytest.raises(opsft_error(), match="greedy decoding"):
        evaluate(str(tiny_model_dir), ROWS, prompt_field="question", completion_field="answer", k=2)


def opsft_error():
    from opsft import OpsftError

    return OpsftError
