from __future__ import annotations

import numpy as np

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
