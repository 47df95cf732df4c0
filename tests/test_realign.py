"""`opsft realign` end to end on the tiny model: outputs, provenance, resume, bad input."""

from __future__ import annotations

import json

import pytest
from conftest import launch

from opsft.cli import main
from opsft.commands.realign import RealignConfig, hinted_prompt, run_realign
from opsft.inputs.data import load_examples

ROWS = [{"question": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}.\n#### {a + b}"}
        for a, b in [(1, 2), (17, 25), (3, 4), (10, 32), (5, 5)]]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def config(model_dir, data, out, **overrides):
    base = dict(model=str(model_dir), data=data, out=str(out), prompt_field="question", completion_field="solution",
                max_new_tokens=12, batch_size=2, temperature=0.7, progress=False)
    return RealignConfig(**{**base, **overrides})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_row_is_kept_or_dropped_with_a_reason(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    summary = run_realign(config(tiny_model_dir, data, tmp_path / "o"))
    dropped = read_jsonl(tmp_path / "o" / "dropped.jsonl")
    kept = read_jsonl(tmp_path / "o" / "realigned.jsonl")
    assert summary["decoded"] == len(ROWS) == len(kept) + len(dropped)
    assert sum(summary["dropped"].values()) == len(dropped)
    assert summary["run"]["answer_marker_used"] == "####"  # the references use it
    for row in dropped:  # a random model writes neither EOS nor the marker in 12 tokens
        assert row["reason"] in ("finished_by_length", "finished_by_repetition", "no_answer_marker", "wrong_answer")
        assert "phi_mean_original" in row and "rewrite" in row
    assert (tmp_path / "o" / "phi_before_after.png").exists()


def test_kept_rows_are_ready_for_training(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    run_realign(config(tiny_model_dir, data, tmp_path / "o", require_correct=False, require_eos=False,
                       answer_marker="none"))
    kept = read_jsonl(tmp_path / "o" / "realigned.jsonl")
    assert len(kept) == len(ROWS)
    for row, original in zip(kept, ROWS):
        assert row["question"] == original["question"]
        assert row["prompt"] == [{"role": "user", "content": original["question"]}]
        assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"]
        assert set(row["realign"]) >= {"finish_reason", "answer_correct", "phi_mean_original", "phi_mean_rewrite",
                                       "temperature", "mean_lambda"}
    again = load_examples(str(tmp_path / "o" / "realigned.jsonl"))  # reads back as prompt/completion
    assert again.shape == "prompt_completion" and len(again.examples) == len(ROWS)


def test_interrupted_run_gives_the_same_final_file(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    options = dict(require_correct=False, require_eos=False, answer_marker="none")
    run_realign(config(tiny_model_dir, data, tmp_path / "whole", **options))
    run_realign(config(tiny_model_dir, data, tmp_path / "killed", **options))
    log = (tmp_path / "killed" / "progress.jsonl").read_text().splitlines()
    (tmp_path / "killed" / "progress.jsonl").write_text("\n".join(log[:3]) + "\n" + log[3][:25])  # mid-write
    (tmp_path / "killed" / "realigned.jsonl").unlink()
    run_realign(config(tiny_model_dir, data, tmp_path / "killed", **options))
    whole = (tmp_path / "whole" / "realigned.jsonl").read_text()
    assert (tmp_path / "killed" / "realigned.jsonl").read_text() == whole
    assert len(read_jsonl(tmp_path / "killed" / "progress.jsonl")) == 1 + len(ROWS)


def test_two_processes_merge_into_the_single_process_file(tiny_model_dir, tmp_path):
    """`accelerate launch` with 2 CPU processes: shards by index, merged by the main process. Each example
    samples from its own seeded generator, so the merged file is the single-process file."""
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    flags = ["--model", str(tiny_model_dir), "--data", data, "--prompt-field", "question", "--completion-field",
             "solution", "--max-new-tokens", "12", "--batch-size", "2", "--temperature", "0.7", "--no-progress",
             "--no-require-correct", "--no-require-eos", "--answer-marker", "none"]
    assert main(["realign", *flags, "--out", str(tmp_path / "one")]) == 0
    launch(2, "realign", *flags, "--out", str(tmp_path / "two"))
    assert sorted(p.name for p in (tmp_path / "two").glob("progress*")) == ["progress-0-of-2.jsonl",
                                                                           "progress-1-of-2.jsonl"]
    one = read_jsonl(tmp_path / "one" / "realigned.jsonl")
    two = read_jsonl(tmp_path / "two" / "realigned.jsonl")
    assert [r["question"] for r in two] == [r["question"] for r in ROWS]
    assert [r["completion"] for r in two] == [r["completion"] for r in one]
    # a rerun in one process finds every row done in the shards and writes the same file
    assert main(["realign", *flags, "--out", str(tmp_path / "two")]) == 0
    assert read_jsonl(tmp_path / "two" / "realigned.jsonl") == two


def test_sampling_is_reproducible_run_to_run(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    options = dict(require_correct=False, require_eos=False, answer_marker="none")
    run_realign(config(tiny_model_dir, data, tmp_path / "a", **options))
    run_realign(config(tiny_model_dir, data, tmp_path / "b", **options))
    run_realign(config(tiny_model_dir, data, tmp_path / "c", seed=1, **options))
    a, b, c = ((tmp_path / x / "realigned.jsonl").read_text() for x in "abc")
    assert a == b and a != c


@pytest.mark.parametrize("rows, extra, message", [
    ([ROWS[0], '{"question": "q", "solution": ""}'], [], "d.jsonl: row 2: field 'solution': the completion is empty"),
    ([ROWS[0], '{"question": "q"}'], [], "d.jsonl: row 2: field 'solution': is missing"),
    ([ROWS[0]], ["--max-length", "64"], "d.jsonl: row 1: field 'prompt': hinted prompt of"),
    ([], [], "d.jsonl: no rows"),
])
def test_bad_input_is_a_clear_error(tiny_model_dir, tmp_path, capsys, rows, extra, message):
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    code = main(["realign", "--model", str(tiny_model_dir), "--data", data, "--prompt-field", "question",
                 "--completion-field", "solution", "--out", str(tmp_path / "o"), "--no-progress", *extra])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("opsft: error: ") and message in err


def test_skip_invalid_counts_prompts_over_the_context(tiny_model_dir, tmp_path):
    rows = ROWS[:2] + [{"question": "long " * 200, "solution": "#### 1"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    summary = run_realign(config(tiny_model_dir, data, tmp_path / "o", max_length=400, skip_invalid=True))
    assert summary["skipped_input"] == {"prompt_too_long": 1} and summary["decoded"] == 2


def test_analysis_first_is_greedy_and_reaches_the_hinted_stream(tiny_model_dir, tiny_model, tokenizer, tmp_path):
    import torch

    from opsft.engine.realignment import write_analyses
    from opsft.inputs.rendering import prompt_ids

    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    cfg = config(tiny_model_dir, data, tmp_path / "o", analysis=True, analysis_max_tokens=6, require_correct=False,
                 require_eos=False, answer_marker="none")
    examples = load_examples(data, prompt_field="question", completion_field="solution").examples
    analyses = write_analyses(tiny_model, tokenizer, examples, cfg)
    for example, analysis in zip(examples, analyses):  # each equals greedy generate on its own, unbatched
        p = prompt_ids(hinted_prompt(example, cfg.analysis_template), tokenizer)
        alone = tiny_model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=6, pad_token_id=0)
        expected = alone[0, len(p):].tolist()
        expected = expected[:next((i for i, t in enumerate(expected) if t in (0, 2)), len(expected))]
        assert analysis == expected + tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    run_realign(cfg)
    kept = read_jsonl(tmp_path / "o" / "realigned.jsonl")
    assert [row["realign"]["analysis"] for row in kept] == [tokenizer.decode(a, skip_special_tokens=True)
                                                           for a in analyses]


def test_hinted_prompt_holds_question_and_solution():
    example = load_examples("gym:gsm_symbolic?size=1&seed=0").examples[0]
    prompt = hinted_prompt(example, "Q: {question}\nS: {solution}")
    assert prompt[-1]["role"] == "user"
    assert prompt[-1]["content"].startswith("Q: " + example.prompt[-1]["content"])
    assert prompt[-1]["content"].endswith("S: " + example.completion[0]["content"])


def test_an_answer_marker_that_never_appears_is_a_counted_drop(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    summary = run_realign(config(tiny_model_dir, data, tmp_path / "o", answer_marker="@@never@@",
                                 require_eos=False, require_correct=False, require_marker=True))
    assert summary["kept"] == 0 and summary["dropped"] == {"no_answer_marker": len(ROWS)}
    assert summary["answer_marker_written"] == 0
    assert all(r["handover_step"] is None for r in read_jsonl(tmp_path / "o" / "dropped.jsonl"))


def test_realign_on_a_dataset_gives_the_realign_commands_rows(tiny_model_dir, tmp_path):
    """opsft.realign on a datasets.Dataset gives realigned.jsonl, dropped.jsonl and the command's summary."""
    import datasets

    from opsft import realign

    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    options = dict(require_eos=False, answer_marker="none", require_correct=False, min_phi_mean=-10.78)
    run_realign(config(tiny_model_dir, data, tmp_path / "o", **options))
    base = {k: v for k, v in vars(config(tiny_model_dir, data, tmp_path / "o")).items()
            if k not in ("model", "data", "out")}
    kept, dropped, summary = realign(str(tiny_model_dir), datasets.Dataset.from_list(ROWS), **{**base, **options})
    assert kept.to_list() == read_jsonl(tmp_path / "o" / "realigned.jsonl")
    assert dropped.to_list() == read_jsonl(tmp_path / "o" / "dropped.jsonl")
    assert len(kept) and len(dropped)  # the phi floor splits the rewrites
    command = json.loads((tmp_path / "o" / "summary.json").read_text())
    same = lambda s: {k: v for k, v in s.items() if k not in ("run", "throughput")}  # noqa: E731
    assert same(summary) == same(command) and summary["run"] == {**command["run"], "data": "the dataset"}
