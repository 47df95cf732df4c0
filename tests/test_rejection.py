"""`opsft rejection`: only the model's own samples that its scorer marks correct, at most --per-problem per
prompt, every sample and prompt not kept counted."""

from __future__ import annotations

import json

import pytest

from opsft.cli import main
from opsft.engine.rejection_sampling import keep_correct

ROWS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(4) for b in range(3)]


def sample(text, correct, finish="eos"):
    return {"text": text, "correct": correct, "finish_reason": finish, "answer": None}


def test_keep_correct_keeps_distinct_finished_correct_answers_up_to_the_cap():
    samples = [sample("a", False), sample("b", True), sample("b", True), sample("c", True, "length"),
               sample("", False), sample("d", True), sample("e", True)]
    kept, dropped = keep_correct(samples, per_problem=2)
    assert kept == [(1, "b"), (5, "d")]
    assert dropped == {"wrong_answer": 1, "duplicate": 1, "finished_by_length": 1, "empty_sample": 1,
                       "over_per_problem": 1}
    assert len(kept) + sum(dropped.values()) == len(samples)
    # the ablation keeps wrong answers too, and nothing else changes
    kept, dropped = keep_correct(samples, per_problem=9, require_correct=False)
    assert kept == [(0, "a"), (1, "b"), (5, "d"), (6, "e")]
    assert dropped == {"duplicate": 1, "finished_by_length": 1, "empty_sample": 1}


def judge(text, reference, verify=None):
    """A scorer the tiny model can satisfy: an answer is 'correct' when its length is even."""
    return len(text) % 2 == 0


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + '{"question": "no answer"}\n')
    return str(path)


def rejection(tmp_path, model_dir, data, *extra):
    return main(["rejection", "--model", str(model_dir), "--data", data, "--prompt-field", "question",
                 "--completion-field", "answer", "--out", str(tmp_path / "out"), "--k", "4", "--max-new-tokens", "6",
                 "--per-problem", "2", "--no-progress", "--skip-invalid", *extra])


def test_rejection_keeps_only_the_models_own_correct_samples(tmp_path, tiny_model_dir, data, monkeypatch):
    import opsft.engine.evaluation

    monkeypatch.setattr(opsft.engine.evaluation, "answer_matches", judge)
    assert rejection(tmp_path, tiny_model_dir, data) == 0
    out = tmp_path / "out"
    kept = [json.loads(line) for line in (out / "rejection.jsonl").read_text().splitlines()]
    samples = {r["row"]: r["samples"] for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}
    summary = json.loads((out / "summary.json").read_text())
    assert kept, "the judge marks about half the samples correct"
    per_problem = {}
    for row in kept:
        source = row["rejection"]["source_row"]
        text = row["completion"][0]["content"]  # mapped question/answer rows: an assistant message
        assert row["prompt"] == [{"role": "user", "content": ROWS[source - 1]["question"]}]
        own = samples[source][row["rejection"]["sample"]]
        assert own["text"] == text and own["correct"] and own["finish_reason"] == "eos" and judge(text, None)
        assert text != ROWS[source - 1]["answer"]  # the model's answer, not the reference
        per_problem.setdefault(source, []).append(text)
    assert all(len(texts) <= 2 and len(set(texts)) == len(texts) for texts in per_problem.values())
    assert summary["rows_read"] == len(ROWS) + 1 and summary["skipped_input"] == {"missing_field": 1}
    assert summary["prompts"] == len(ROWS) == summary["prompts_kept"] + summary["prompts_without_answer"]
    assert summary["kept"] + sum(summary["samples_not_kept"].values()) == summary["samples"] == 4 * len(ROWS)
    assert summary["prompts_kept"] == len(per_problem)
    # the samples are the model's own: the first kept one, generated again from its seed, alone
    from opsft.engine.generation import SamplingConfig, decoded_text, eos_token_ids, row_seed
    from opsft.engine.generation import sample as generate
    from opsft.inputs.models import load_model
    from opsft.inputs.rendering import prompt_ids

    model, tokenizer = load_model(str(tiny_model_dir))
    first = kept[0]["rejection"]
    prompt = prompt_ids(kept[0]["prompt"], tokenizer)
    eos = eos_token_ids(model, tokenizer)
    (again,) = generate(model, [prompt], SamplingConfig(temperature=1.0, max_new_tokens=6), eos_token_ids=eos,
                        pad_token_id=tokenizer.pad_token_id, seeds=[row_seed(0, first["source_row"] - 1,
                                                                              first["sample"])])
    assert decoded_text(tokenizer, again, eos) == kept[0]["completion"][0]["content"]


def test_rejection_data_trains_and_a_rerun_resumes(tmp_path, tiny_model_dir, data, monkeypatch, capsys):
    import opsft.engine.evaluation

    monkeypatch.setattr(opsft.engine.evaluation, "answer_matches", judge)
    assert rejection(tmp_path, tiny_model_dir, data) == 0
    first = (tmp_path / "out" / "rejection.jsonl").read_text()
    assert rejection(tmp_path, tiny_model_dir, data) == 0  # a rerun reads its log and writes the same file
    assert (tmp_path / "out" / "rejection.jsonl").read_text() == first
    assert rejection(tmp_path, tiny_model_dir, data, "--temperature", "0.5") == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(tmp_path / "out" / "rejection.jsonl"),
                 "--output-dir", str(tmp_path / "t"), "--max-steps", "1", "--no-progress"]) == 0


def test_per_problem_above_k_is_refused(tmp_path, capsys):
    assert main(["rejection", "--model", "m", "--data", "d.jsonl", "--out", str(tmp_path / "o"), "--k", "2",
                 "--per-problem", "3"]) == 2
    assert "--per-problem (3) must be <= --k (2)" in capsys.readouterr().err


def test_rejection_samples_on_a_dataset_are_the_rejection_commands_rows(tmp_path, tiny_model_dir, data, monkeypatch):
    """opsft.rejection_samples on a datasets.Dataset gives rejection.jsonl's rows and the command's summary."""
    import datasets

    import opsft.engine.evaluation
    from opsft import rejection_samples

    monkeypatch.setattr(opsft.engine.evaluation, "answer_matches", judge)
    assert rejection(tmp_path, tiny_model_dir, data) == 0
    rows = [json.loads(line) for line in open(data)]
    kept, summary = rejection_samples(str(tiny_model_dir), datasets.Dataset.from_list(rows), prompt_field="question",
                                      completion_field="answer", k=4, max_new_tokens=6, per_problem=2,
                                      skip_invalid=True, progress=False)
    out = tmp_path / "out"
    written = [json.loads(line) for line in (out / "rejection.jsonl").read_text().splitlines()]
    assert written and kept.to_list() == written
    command = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "run"} == {k: v for k, v in command.items() if k != "run"}
    assert {k: v for k, v in summary["run"].items() if k != "data"} == {
        k: v for k, v in command["run"].items() if k not in ("data", "out", "overwrite")}
