from __future__ import annotations

import numpy as np
import pytest

from opsft.engine.scoring import score_examples, score_token_ids
from opsft.inputs.data import Example
from opsft.inputs.rendering import tokenize_example


def examples():
    pairs = [("What is 1 + 2?", "1 + 2 = 3. #### 3"), ("hello world", "The answer is 42."), ("Solve it", "")]
    return [Example([{"role": "user", "content": p}], [{"role": "assistant", "content": c}], {"i": i}, i)
            for i, (p, c) in enumerate(pairs)]


def test_score_examples_equals_scoring_its_tokens_one_by_one(tiny_model, tokenizer):
    data = examples()[:2]
    result = score_examples(tiny_model, tokenizer, data, temperature=0.8, batch_size=2, save_tokens=True,
                            progress=False)
    assert [s.index for s in result.scored] == [0, 1] and result.skipped == []
    for example, scored in zip(data, result.scored):
        ids, start = tokenize_example(example.prompt, example.completion, tokenizer)
        (phi,) = score_token_ids(tiny_model, [(ids, start)], temperature=0.8)
        assert scored.token_ids == ids[start:]
        np.testing.assert_allclose(scored.token_phi, phi, atol=1e-5)
        assert scored.phi_mean == np.float64(np.mean(scored.token_phi))


def test_an_empty_completion_still_has_its_end_of_turn_token(tiny_model, tokenizer):
    """Under a chat template an empty reply is still '<|im_end|>\\n': scored, as training would train it."""
    result = score_examples(tiny_model, tokenizer, examples()[2:], progress=False, save_tokens=True)
    assert tokenizer.decode(result.scored[0].token_ids) == "<|im_end|>\n"


ROWS = [{"question": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}.", "id": i}
        for i, (a, b) in enumerate([(1, 2), (17, 25), (3, 4), (10, 32), (5, 5)])]


def test_score_on_a_dataset_gives_the_score_commands_rows_and_summary(tmp_path, tiny_model_dir, tokenizer):
    """opsft.score on a datasets.Dataset (and on a loaded model, and on the file) equals `opsft score`: the same
    rows with the same phi columns, the same summary statistics and counts."""
    import json

    from datasets import Dataset

    from opsft import score
    from opsft.cli import main
    from opsft.inputs.models import load_model

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    fields = dict(prompt_field="question", completion_field="solution")
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--prompt-field", "question",
                 "--completion-field", "solution", "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    command_rows = [json.loads(line) for line in (tmp_path / "cli" / "scored.jsonl").read_text().splitlines()]
    command_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    model, tokenizer = load_model(str(tiny_model_dir))
    for scored, summary in (score(str(tiny_model_dir), Dataset.from_list(ROWS), progress=False, **fields),
                            score(model, ROWS, processing_class=tokenizer, progress=False, **fields),
                            score(str(tiny_model_dir), str(data), progress=False, **fields)):
        assert scored.column_names == list(command_rows[0])
        for ours, theirs in zip(scored, command_rows, strict=True):
            assert {k: v for k, v in ours.items() if not k.startswith("phi")} == \
                   {k: v for k, v in theirs.items() if not k.startswith("phi")}
            assert [ours[k] for k in ("phi_mean", "phi_std", "phi_sum")] == pytest.approx(
                [theirs[k] for k in ("phi_mean", "phi_std", "phi_sum")], rel=1e-6, abs=1e-9)
        for key in ("n_examples", "n_tokens", "rows_read", "skipped", "in_distribution", "out_of_distribution"):
            assert summary[key] == command_summary[key], key
        assert summary["phi_mean"]["mean"] == pytest.approx(command_summary["phi_mean"]["mean"], rel=1e-6)


def test_score_names_a_bad_row_of_the_dataset_or_counts_it(tiny_model_dir):
    from opsft import DataError, score

    rows = ROWS[:2] + [{"question": "What is 1 + 1?"}]
    with pytest.raises(DataError, match="the dataset: row 3"):
        score(str(tiny_model_dir), rows, prompt_field="question", completion_field="solution", progress=False)
    scored, summary = score(str(tiny_model_dir), rows, prompt_field="question", completion_field="solution",
                            skip_invalid=True, progress=False)
    assert (len(scored), summary["rows_read"], sum(summary["skipped"].values())) == (2, 3, 1)
