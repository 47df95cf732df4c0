"""phi against a slow, obvious reference: float64, full softmax, one example at a time, no batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model

from opsft.engine.scoring import score_token_ids
from opsft.methods.ddt import logprobs_and_entropy, phi_statistics, token_phi


def reference_phi(model, ids: list[int], start: int, temperature: float) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0].double().cpu() / temperature
    log_p = F.log_softmax(logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return np.array([(log_p[t - 1, ids[t]] + entropy[t - 1]).item() for t in range(start, len(ids))])


def random_sequences(vocab: int, lengths, starts, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, vocab, (n,), generator=g).tolist(), s) for n, s in zip(lengths, starts)]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_phi_matches_float64_reference(tiny_model, temperature):
    sequences = random_sequences(tiny_model.config.vocab_size, [12, 30, 5], [4, 10, 1])
    got = score_token_ids(tiny_model, sequences, temperature=temperature, batch_size=1)
    for (ids, start), phi in zip(sequences, got):
        np.testing.assert_allclose(phi, reference_phi(tiny_model, ids, start, temperature), rtol=0, atol=1e-5)


def test_an_fp64_model_gets_fp32_accumulation_precision(tiny_model):
    """TRL's kernel keeps its softmax sums in fp32, even for an fp64 model: phi is good to ~1e-6, as the
    docstring says, not to float64 precision (measured here: 4e-6 at most on these sequences)."""
    model = make_model(tiny_model.config.vocab_size).to(torch.float64)
    sequences = random_sequences(model.config.vocab_size, [40, 7, 23], [5, 2, 20], seed=1)
    for (ids, start), phi in zip(sequences, score_token_ids(model, sequences, temperature=1.0)):
        assert phi.dtype == np.float64
        np.testing.assert_allclose(phi, reference_phi(model, ids, start, 1.0), rtol=0, atol=2e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
def test_padding_and_batching_do_not_change_phi(tiny_model, padding_side, temperature, dtype, rtol):
    """In float64 the batched result is the lone one exactly (any masking or position bug would show);
    in float32 it differs only by round-off (relative 1e-6 on phi of -12 nats for random tokens)."""
    model = make_model(tiny_model.config.vocab_size).to(dtype)
    sequences = random_sequences(model.config.vocab_size, [40, 7, 23, 3, 31], [5, 2, 20, 1, 9], seed=1)
    alone = [score_token_ids(model, [s], temperature=temperature)[0] for s in sequences]
    batched = score_token_ids(model, sequences, temperature=temperature, batch_size=5, padding_side=padding_side)
    for a, b, (ids, start) in zip(alone, batched, sequences):
        assert len(b) == len(ids) - start
        np.testing.assert_allclose(b, a, rtol=rtol, atol=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("softcap, logit_scale", [(None, 1.0), (None, 0.37), (3.0, 1.0), (2.5, 1.8)])
def test_logprobs_and_entropy_kernel_matches_reference(softcap, logit_scale):
    """The tiled head against full logits, with the logit transforms that some model families apply."""
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(37, 16, generator=g), torch.randn(20000, 16, generator=g)  # > one vocab tile
    bias, targets = torch.randn(20000, generator=g), torch.randint(0, 20000, (37,), generator=g)
    z = (hidden.double() @ weight.double().T + bias.double()) * logit_scale
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    log_p = F.log_softmax(z / 0.8, dim=-1)
    ref_lp = log_p.gather(-1, targets[:, None])[:, 0]
    ref_h = -(log_p.exp() * log_p).sum(-1)
    lp, h = logprobs_and_entropy(hidden, weight, bias, targets, temperature=0.8, softcap=softcap,
                                 logit_scale=logit_scale)
    np.testing.assert_allclose(lp.double(), ref_lp, atol=2e-5)
    np.testing.assert_allclose(h.double(), ref_h, atol=2e-5)
    np.testing.assert_allclose(token_phi(lp, h).double(), ref_lp + ref_h, atol=4e-5)


def test_softcapped_model_family_scores_like_its_own_logits():
    """Gemma-2 caps its logits; the scorer must apply the same cap the model's forward does."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0,
                          initializer_range=0.5, pad_token_id=0)
    model = Gemma2ForCausalLM(config).eval()
    ids, start = random_sequences(300, [20], [6])[0]
    phi = score_token_ids(model, [(ids, start)])[0]
    np.testing.assert_allclose(phi, reference_phi(model, ids, start, 1.0), atol=1e-5)


def test_phi_statistics():
    stats = phi_statistics(np.array([0.5, -1.0, 0.25, 0.0]))
    assert stats["n_tokens"] == 4
    assert stats["phi_sum"] == pytest.approx(-0.25)
    assert stats["phi_mean"] == pytest.approx(-0.0625)
    assert stats["phi_pos_ratio"] == pytest.approx(0.5)
    assert stats["phi_std"] == pytest.approx(np.std([0.5, -1.0, 0.25, 0.0]))


# ---- statistical checks: phi is centred on the model's own samples -------------------------------------

def sample_completions(model, prompt: list[int], n: int, length: int, temperature: float, seed: int):
    """Plain ancestral sampling from softmax(logits / temperature), no cache, no stopping."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([prompt] * n)
    with torch.no_grad():
        for _ in range(length):
            probs = (model(ids).logits[:, -1].double() / temperature).softmax(-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], dim=1)
    return [(row.tolist(), len(prompt)) for row in ids]


def mean_and_standard_error(phis: list[np.ndarray]) -> tuple[float, float]:
    """Token-mean phi; its standard error from per-sequence sums (independent across sequences)."""
    sums = np.array([p.sum() for p in phis])
    length = len(phis[0])
    return sums.mean() / length, sums.std(ddof=1) / math.sqrt(len(sums)) / length


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_own_samples_centre_on_zero_and_other_models_samples_do_not(tiny_model, temperature):
    prompt = [1, 87, 85, 262, 201]
    own = sample_completions(tiny_model, prompt, n=96, length=24, temperature=temperature, seed=1)
    mean, se = mean_and_standard_error(score_token_ids(tiny_model, own, temperature=temperature, batch_size=32))
    assert abs(mean) < 4 * se, (mean, se)

    other = make_model(tiny_model.config.vocab_size, seed=7)
    theirs = sample_completions(other, prompt, n=96, length=24, temperature=temperature, seed=1)
    mean, se = mean_and_standard_error(score_token_ids(tiny_model, theirs, temperature=temperature, batch_size=32))
    assert mean < -0.3 and mean < -10 * se, (mean, se)


def test_colder_samples_score_positive_hotter_negative(tiny_model):
    """SPEC §1: data sampled at tau' < tau scores positive under tau, tau' > tau negative."""
    prompt = [1, 87, 85, 262, 201]
    for sample_temperature, sign in ((0.6, 1), (1.6, -1)):
        samples = sample_completions(tiny_model, prompt, n=64, length=16, temperature=sample_temperature, seed=3)
        mean, se = mean_and_standard_error(score_token_ids(tiny_model, samples, temperature=1.0, batch_size=32))
        assert sign * mean > 5 * se, (sample_temperature, mean, se)
