"""Hinted Decoding against a slow reference: one example, no cache, full recompute, two separate passes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_model
from reference_hinted import EOS, reference_decode

from opsft.engine.generation import RepetitionDetector, sample_token
from opsft.engine.hinted_decoding import hinted_decode
from opsft.methods.hinted import HintedDecodingConfig, mixing_lambda, mixture_logprobs

# transformers renamed the KV cache argument (past_key_values -> cache) and warns on the old name: decoding uses
# the name the installed version has (generation.CACHE), so no FutureWarning may reach these tests
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")


@pytest.fixture(scope="module")
def model64(tokenizer):
    """float64, so that greedy ties cannot depend on the order of floating-point sums."""
    return make_model(len(tokenizer), seed=3).double()


def prompts(tokenizer):
    questions = ["Solve 3x + 4 = 19", "What is 17 + 25?", "hello"]
    solutions = ["Let x be 5. Then 3x + 4 = 19. #### 5", "The answer is 42.", "hello world, this is a small corpus"]
    hinted = [tokenizer(f"Question: {q}\nReference: {s}\nYour solution:")["input_ids"] for q, s in
              zip(questions, solutions)]
    plain = [tokenizer(f"Question: {q}\nAnswer:")["input_ids"] for q in questions]
    assert len({len(p) for p in hinted + plain}) > 3  # mixed lengths in one batch
    return hinted, plain


GREEDY = HintedDecodingConfig(temperature=0.0, max_new_tokens=24, answer_marker=None, repeat_window=6,
                              repeat_count=3)
MODES = {
    "linear": dataclasses.replace(GREEDY, lambda_mode="linear", beta=1.5),
    "sigmoid": dataclasses.replace(GREEDY, lambda_mode="sigmoid", beta=12.0, center=0.35),
    "piecewise": dataclasses.replace(GREEDY, lambda_mode="piecewise", h1=0.2, h2=0.5),
}


@pytest.mark.parametrize("mode", MODES)
def test_batched_cached_decoder_is_token_identical_to_the_reference(model64, tokenizer, mode):
    config = MODES[mode]
    hinted, plain = prompts(tokenizer)
    # a token row 0 writes early also ends a row, so rows finish at different steps and leave the batch
    early = hinted_decode(model64, hinted[:1], plain[:1], config, eos_token_ids={EOS})[0].tokens[5]
    eos = {EOS, early}
    got = hinted_decode(model64, hinted, plain, config, eos_token_ids=eos, tokenizer=tokenizer)
    assert len({len(r.tokens) for r in got}) > 1
    mixed = False
    for h, q, result in zip(hinted, plain, got):
        tokens, reason, handover, lams = reference_decode(model64, h, q, config, tokenizer, eos)
        assert result.tokens == tokens and result.finish_reason == reason
        assert result.lambdas == pytest.approx(lams, abs=1e-9)
        mixed |= any(0.05 < lam < 0.95 for lam in lams)
    assert mixed, "the test should exercise a real mixture (0 < lam < 1), not just one stream"


def test_answer_handover_then_the_plain_stream_writes_alone(model64, tokenizer):
    hinted, plain = prompts(tokenizer)
    free = hinted_decode(model64, hinted[:1], plain[:1], MODES["linear"], eos_token_ids={EOS})[0]
    marker = tokenizer.decode(free.tokens[3:5])  # text the decoder is known to write at steps 3-4
    config = dataclasses.replace(MODES["linear"], answer_marker=marker)
    result = hinted_decode(model64, hinted[:1], plain[:1], config, eos_token_ids={EOS}, tokenizer=tokenizer)[0]
    tokens, reason, handover, lams = reference_decode(model64, hinted[0], plain[0], config, tokenizer)
    assert result.handover_step == handover is not None and handover <= 4
    assert result.tokens == tokens and result.finish_reason == reason
    assert all(lam == 1.0 for lam in result.lambdas[handover + 1:])


def test_repetition_stop(model64, tokenizer):
    hinted, plain = prompts(tokenizer)
    config = dataclasses.replace(MODES["piecewise"], repeat_window=2, repeat_count=3, max_new_tokens=64)
    results = hinted_decode(model64, hinted, plain, config, eos_token_ids=set(), tokenizer=tokenizer)
    assert any(r.finish_reason == "repetition" for r in results)
    for h, q, result in zip(hinted, plain, results):
        assert (result.tokens, result.finish_reason) == reference_decode(model64, h, q, config, tokenizer)[:2]
    detector = RepetitionDetector(window=3, count=2)
    assert [detector.push(t) for t in [1, 2, 3, 9, 1, 2, 3]] == [False] * 6 + [True]


def test_beta_0_is_greedy_decoding_of_the_hinted_stream(model64, tokenizer):
    hinted, plain = prompts(tokenizer)
    config = dataclasses.replace(GREEDY, lambda_mode="linear", beta=0.0, repeat_window=0)
    for h, q in zip(hinted, plain):
        ours = hinted_decode(model64, [h], [q], config, eos_token_ids={EOS})[0].tokens
        generated = model64.generate(torch.tensor([h]), max_new_tokens=config.max_new_tokens, do_sample=False,
                                     eos_token_id=EOS, pad_token_id=0)[0, len(h):].tolist()
        assert ours == generated


def test_lambda_1_is_model_generate_on_the_plain_prompt(model64, tokenizer):
    hinted, plain = prompts(tokenizer)
    config = dataclasses.replace(GREEDY, lambda_mode="piecewise", h1=0.0, h2=0.0, hinted_first_token=False,
                                 repeat_window=0)
    results = hinted_decode(model64, hinted, plain, config, eos_token_ids={EOS})
    for q, result in zip(plain, results):
        generated = model64.generate(torch.tensor([q]), max_new_tokens=config.max_new_tokens, do_sample=False,
                                     eos_token_id=EOS, pad_token_id=0)[0, len(q):].tolist()
        assert result.tokens == generated


def test_sampling_is_reproducible_with_a_seed(tiny_model, tokenizer):
    hinted, plain = prompts(tokenizer)
    config = HintedDecodingConfig(temperature=1.0, top_p=0.95, max_new_tokens=20, answer_marker=None, seed=11)
    first = [r.tokens for r in hinted_decode(tiny_model, hinted, plain, config, eos_token_ids={EOS})]
    again = [r.tokens for r in hinted_decode(tiny_model, hinted, plain, config, eos_token_ids={EOS})]
    other = [r.tokens for r in hinted_decode(tiny_model, hinted, plain, dataclasses.replace(config, seed=12),
                                             eos_token_ids={EOS})]
    assert first == again and first != other


def test_mixture_and_nucleus():
    log_h = torch.log(torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64))
    log_q = torch.log(torch.tensor([[0.1, 0.1, 0.8]], dtype=torch.float64))
    for lam in (0.0, 0.3, 1.0):
        m = torch.tensor([0.7 ** (1 - lam) * 0.1 ** lam, 0.2 ** (1 - lam) * 0.1 ** lam,
                          0.1 ** (1 - lam) * 0.8 ** lam], dtype=torch.float64)
        got = mixture_logprobs(log_h, log_q, torch.tensor([lam], dtype=torch.float64)).exp()[0]
        torch.testing.assert_close(got, m / m.sum())
    # top-p 0.6 keeps only the most likely token of [0.7, 0.2, 0.1], whatever the temperature
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_token(log_h, 5.0, 0.6, g)) for _ in range(50)}
    assert draws == {0}
    assert {int(sample_token(log_h, 1.0, 1.0, g)) for _ in range(200)} == {0, 1, 2}
    assert mixing_lambda(torch.tensor([0.0, 0.2, 0.9]), HintedDecodingConfig(beta=3.0)).tolist() == pytest.approx(
        [0.0, 0.6, 1.0])
