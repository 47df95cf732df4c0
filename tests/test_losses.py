"""The loss family against float64 references: gradients, special cases, schedule, validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from opsft.methods.losses import LossConfig, family_loss, idft_gamma, idft_lambda, token_weights, weighted_nll
from opsft.methods.vocab_kl import vocab_kl
from opsft.runtime.errors import OpsftError

B, T, V = 3, 7, 11


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False  # a prompt
    mask[2, 5:] = False  # padding
    ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    quality = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    return logits, targets, mask, ref, quality


def forward(logits, targets):
    log_p = F.log_softmax(logits, -1)
    return log_p.gather(-1, targets[..., None])[..., 0], -(log_p.exp() * log_p).sum(-1)


CONFIGS = {
    "sft": LossConfig("sft"),
    "dft": LossConfig("dft"),
    "idft": LossConfig("idft"),
    "idft_schedule": LossConfig("idft", idft_beta=0.5, idft_gamma_min=0.3, idft_gamma_max=1.5, idft_warmup_ratio=0.2,
                                idft_transition_ratio=0.5),
    "iwsft_sequence": LossConfig("iwsft", iw_kappa=0.7, iw_w_max=3.0),
    "iwsft_token": LossConfig("iwsft", iw_level="token"),
    "sftq": LossConfig("sftq"),
    "eaft": LossConfig("eaft"),
    "eaft_alpha": LossConfig("eaft", eaft_alpha=2.5),
}


def reference_weights(config: LossConfig, logits, targets, mask, ref, quality, progress):
    """w_t one token at a time, from the float64 full softmax, straight from SPEC §2."""
    w = torch.zeros(B, T, dtype=torch.float64)
    with torch.no_grad():
        for b in range(B):
            tokens = [t for t in range(T) if mask[b, t]]
            log_p = {t: F.log_softmax(logits[b, t], -1)[targets[b, t]].item() for t in tokens}
            if config.loss == "iwsft" and config.iw_level == "sequence":
                mean = sum(log_p[t] - ref[b, t].item() for t in tokens) / len(tokens)
                seq_w = min(max(math.exp(config.iw_kappa * mean), 0), config.iw_w_max)
            for t in tokens:
                p = math.exp(log_p[t])
                if config.loss == "sft":
                    w[b, t] = 1
                elif config.loss == "dft":
                    w[b, t] = p
                elif config.loss == "idft":
                    probs = F.softmax(logits[b, t], -1)
                    phi = log_p[t] - (probs * probs.log()).sum().item()
                    s = progress
                    lam = 0 if s < config.idft_warmup_ratio else (
                        1 if config.idft_transition_ratio == 0 else min(1, (s - config.idft_warmup_ratio) / config.idft_transition_ratio))
                    gamma = 1 + lam * (min(max(math.exp(-phi / config.idft_beta), config.idft_gamma_min),
                                           config.idft_gamma_max) - 1)
                    w[b, t] = p ** gamma
                elif config.loss == "iwsft":
                    w[b, t] = seq_w if config.iw_level == "sequence" else min(
                        max(math.exp(log_p[t] - ref[b, t].item()), config.iw_clip_low),
                        config.iw_clip_high)
                elif config.loss == "sftq":
                    w[b, t] = quality[b]
                elif config.loss == "eaft":
                    probs = F.softmax(logits[b, t], -1)
                    entropy = -(probs * probs.log()).sum().item()
                    w[b, t] = (entropy / math.log(V)) ** config.eaft_alpha
    return w


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("progress", [0.1, 0.45, 1.0])
def test_gradient_wrt_logits_is_w_times_softmax_minus_onehot_over_n(name, progress):
    config = CONFIGS[name]
    logits, targets, mask, ref, quality = batch()
    log_probs, entropy = forward(logits, targets)
    terms = token_weights(config, log_probs, entropy, mask, progress=progress, ref_log_probs=ref, quality=quality,
                          vocab_size=V)
    n = int(mask.sum()) + 5  # the global batch may hold more tokens than this micro-batch
    (grad,) = torch.autograd.grad(weighted_nll(log_probs, terms.weights, n), logits)

    w = reference_weights(config, logits, targets, mask, ref, quality, progress)
    torch.testing.assert_close(terms.weights.detach(), w, atol=1e-12, rtol=1e-10)
    analytic = w[..., None] * (F.softmax(logits.detach(), -1) - F.one_hot(targets, V)) / n
    torch.testing.assert_close(grad, analytic, atol=1e-12, rtol=1e-10)


def completion_positions(mask):
    """(b, t) of every completion position, one at a time: the references' loop."""
    return [(b, t) for b in range(B) for t in range(T) if mask[b, t]]


@pytest.mark.parametrize("anchor", [0.1, 0.7])
def test_asft_is_dft_plus_the_full_vocabulary_kl_in_value_and_gradient_on_every_logit(anchor):
    """The published ASFT, from the float64 full softmax one position at a time: l = -sg(p) log p + mu KL(p_ref ||
    p_theta), so dl/dz(v) = p (softmax(v) - onehot(v)) + mu (p_theta(v) - p_ref(v)), over N. The KL comes from
    methods/vocab_kl.py with W = I (its hidden states are the logits), tiled as in training."""
    logits, targets, mask, _, _ = batch()
    ref_logits = torch.randn(B, T, V, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    log_probs, entropy = forward(logits, targets)
    eye = torch.eye(V, dtype=torch.float64)
    kl = vocab_kl(logits[mask], eye, None, ref_logits[mask], eye, tile=4)
    reference_kl = kl.new_zeros(mask.shape).masked_scatter(mask, kl)
    terms = token_weights(LossConfig("asft", asft_anchor=anchor), log_probs, entropy, mask, reference_kl=reference_kl)
    n = int(mask.sum()) + 5
    loss = family_loss(log_probs, terms, n)
    (grad,) = torch.autograd.grad(loss, logits)
    expected_loss, analytic = 0.0, torch.zeros_like(grad)
    with torch.no_grad():
        for b, t in completion_positions(mask):
            probs, ref_probs = F.softmax(logits[b, t], -1), F.softmax(ref_logits[b, t], -1)
            p = probs[targets[b, t]].item()
            kl_bt = (ref_probs * (ref_probs.log() - probs.log())).sum().item()
            expected_loss += -p * math.log(p) + anchor * kl_bt
            analytic[b, t] = (p * (probs - F.one_hot(targets[b, t], V)) + anchor * (probs - ref_probs)) / n
    assert loss.item() == pytest.approx(expected_loss / n, rel=1e-12)
    torch.testing.assert_close(grad, analytic, atol=1e-12, rtol=1e-10)
    assert terms.stats["kl"].numel() == int(mask.sum()) and (terms.stats["kl"] >= 0).all()


@pytest.mark.parametrize("anchor", [0.1, 0.7])
def test_asft_token_is_dft_plus_the_k3_anchor_in_value_and_gradient_on_every_logit(anchor):
    """Per token, from the float64 full softmax: l = -sg(p) log p + mu sg(p) (p_ref/p - log(p_ref/p) - 1), so
    dl/dz = [p - mu (p - p_ref)] (softmax - onehot): on the data token's logit mu (p - p_ref)(1 - p) of anchor,
    where the full KL has mu (p - p_ref), and on every other logit another direction too."""
    logits, targets, mask, ref, _ = batch()
    log_probs, entropy = forward(logits, targets)
    terms = token_weights(LossConfig("asft_token", asft_anchor=anchor), log_probs, entropy, mask, ref_log_probs=ref)
    n = int(mask.sum()) + 5
    loss = family_loss(log_probs, terms, n)
    (grad,) = torch.autograd.grad(loss, logits)
    expected_loss, analytic = 0.0, torch.zeros_like(grad)
    with torch.no_grad():
        for b, t in completion_positions(mask):
            probs = F.softmax(logits[b, t], -1)
            p, p_ref = probs[targets[b, t]].item(), math.exp(ref[b, t].item())
            expected_loss += -p * math.log(p) + anchor * p * (p_ref / p - math.log(p_ref / p) - 1)
            analytic[b, t] = (p - anchor * (p - p_ref)) * (probs - F.one_hot(targets[b, t], V)) / n
    assert loss.item() == pytest.approx(expected_loss / n, rel=1e-12)
    torch.testing.assert_close(grad, analytic, atol=1e-12, rtol=1e-10)
    assert (terms.stats["k3"] >= 0).all() and terms.stats["k3"].numel() == int(mask.sum())


def test_asft_token_clamps_the_log_ratio_so_its_anchor_cannot_overflow():
    """SkyRL's clamp of r = log p_ref - log p_theta to [-10, 10] (SPEC §6): a data token the model has pushed to
    p = 1e-40 while the reference gave it 0.5 would make exp(r) overflow fp32 (r = 91.4) and the loss inf; clamped,
    the anchor is finite, e^10 - 10 - 1 per unit of mu * p, and carries no gradient there."""
    log_probs = torch.tensor([[math.log(1e-40), -1.0]], dtype=torch.float32, requires_grad=True)
    ref = torch.tensor([[math.log(0.5), -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    terms = token_weights(LossConfig("asft_token", asft_anchor=1.0), log_probs, None, mask, ref_log_probs=ref)
    r = ref[0, 0] - log_probs[0, 0]
    assert torch.isinf(torch.exp(r) - r - 1)  # what the estimate would be without the clamp
    assert terms.stats["k3"][0].item() == pytest.approx(math.exp(10) - 11, rel=1e-6)
    assert terms.stats["k3"][1].item() == 0.0
    family_loss(log_probs, terms, 2).backward()
    assert torch.isfinite(log_probs.grad).all()


@pytest.mark.parametrize("loss", ["asft", "asft_token"])
def test_asft_without_its_anchor_is_dft_exactly_and_needs_no_reference(loss):
    logits, targets, mask, ref, _ = batch()
    log_probs, entropy = forward(logits, targets)
    n = int(mask.sum())
    dft = family_loss(log_probs, token_weights(LossConfig("dft"), log_probs, entropy, mask), n)
    asft = family_loss(log_probs, token_weights(LossConfig(loss, asft_anchor=0.0), log_probs, entropy, mask), n)
    assert asft.item() == dft.item()
    assert torch.equal(torch.autograd.grad(asft, logits, retain_graph=True)[0], torch.autograd.grad(dft, logits)[0])
    off, on = LossConfig(loss, asft_anchor=0.0), LossConfig(loss)
    assert not (off.needs_reference_log_probs or off.needs_reference_model)
    assert (on.needs_reference_model, on.needs_reference_log_probs) == ((True, False) if loss == "asft" else
                                                                         (False, True))


def test_asft_token_starts_as_dft_where_the_model_is_its_reference():
    logits, targets, mask, _, _ = batch()
    log_probs, entropy = forward(logits, targets)
    at_start = token_weights(LossConfig("asft_token"), log_probs, entropy, mask, ref_log_probs=log_probs.detach())
    assert at_start.anchor.abs().max().item() == 0.0


def test_eaft_weight_is_the_normalised_entropy_of_the_full_distribution():
    """EAFT's weight from H over all V logits (what TRL's fused head returns), not a top-k approximation."""
    logits, targets, mask, *_ = batch()
    log_probs, entropy = forward(logits, targets)
    weights = token_weights(LossConfig("eaft"), log_probs, entropy, mask, vocab_size=V).weights
    probs = F.softmax(logits.detach(), -1)
    full = -(probs * probs.log()).sum(-1) / math.log(V)
    torch.testing.assert_close(weights, full * mask, atol=1e-15, rtol=1e-13)
    assert 0 < weights[mask].min() and weights[mask].max() <= 1
    uniform = torch.zeros(1, 2, V, dtype=torch.float64)  # maximal entropy: weight 1, i.e. SFT
    u_log_probs, u_entropy = forward(uniform, torch.zeros(1, 2, dtype=torch.long))
    assert token_weights(LossConfig("eaft"), u_log_probs, u_entropy, torch.ones(1, 2, dtype=torch.bool),
                         vocab_size=V).weights[0].tolist() == pytest.approx([1.0, 1.0])


def test_idft_legacy_keeps_p_gamma_in_the_gradient_and_flips_its_sign():
    logits, targets, mask, *_ = batch()
    log_probs, entropy = forward(logits, targets)
    terms = token_weights(LossConfig("idft_legacy"), log_probs, entropy, mask)
    (grad,) = torch.autograd.grad(weighted_nll(log_probs, terms.weights, int(mask.sum())), logits)
    log_p = log_probs.detach()
    gamma = idft_gamma(log_p + entropy.detach(), 1.0)
    w = torch.exp(gamma * log_p) * mask
    # d/dz of -p^g log p = -p^g (1 + g log p) d(log p)/dz: the factor turns negative for p < exp(-1/g)
    factor = w * (1 + gamma * log_p)
    analytic = factor[..., None] * (F.softmax(logits.detach(), -1) - F.one_hot(targets, V)) / int(mask.sum())
    torch.testing.assert_close(grad, analytic, atol=1e-12, rtol=1e-10)
    assert ((factor < 0) & mask).any(), "the test batch should contain tokens whose gradient flips"


def test_idft_with_gamma_forced_to_0_is_sft_and_to_1_is_dft():
    logits, targets, mask, *_ = batch()
    log_probs, entropy = forward(logits, targets)
    n = int(mask.sum())
    sft = weighted_nll(log_probs, token_weights(LossConfig("sft"), log_probs, entropy, mask).weights, n)
    dft = weighted_nll(log_probs, token_weights(LossConfig("dft"), log_probs, entropy, mask).weights, n)
    gamma_0 = LossConfig("idft", idft_gamma_min=0.0, idft_gamma_max=0.0)
    gamma_1 = LossConfig("idft", idft_gamma_min=1.0, idft_gamma_max=1.0)
    assert weighted_nll(log_probs, token_weights(gamma_0, log_probs, entropy, mask).weights, n).item() == sft.item()
    torch.testing.assert_close(
        weighted_nll(log_probs, token_weights(gamma_1, log_probs, entropy, mask).weights, n), dft, rtol=1e-15, atol=0)
    # during warm-up (lam = 0) IDFT is DFT whatever gamma_min/max
    warm = LossConfig("idft", idft_warmup_ratio=0.5)
    torch.testing.assert_close(
        weighted_nll(log_probs, token_weights(warm, log_probs, entropy, mask, progress=0.2).weights, n), dft)


def test_iwsft_at_step_0_is_sft_exactly():
    logits, targets, mask, *_ = batch()
    log_probs, entropy = forward(logits, targets)
    ref = log_probs.detach().clone()  # the reference is the initial model itself
    n = int(mask.sum())
    sft = weighted_nll(log_probs, token_weights(LossConfig("sft"), log_probs, entropy, mask).weights, n)
    for level in ("sequence", "token"):
        iw = token_weights(LossConfig("iwsft", iw_level=level, iw_clip_low=0.2), log_probs, entropy, mask,
                           ref_log_probs=ref)
        assert weighted_nll(log_probs, iw.weights, n).item() == sft.item()


def test_lambda_schedule():
    assert idft_lambda(0.3) == 1.0
    assert [idft_lambda(s, 0.2, 0.4) for s in (0.0, 0.19, 0.2, 0.4, 0.6, 0.9)] == pytest.approx(
        [0, 0, 0, 0.5, 1, 1])


def test_gamma_is_bounded_for_extreme_phi():
    gamma = idft_gamma(torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4]), 1.0)
    assert torch.isfinite(gamma).all()
    assert gamma[0] == 2.0 and gamma[-1] == pytest.approx(0.1) and gamma[2] == 1.0


@pytest.mark.parametrize("change, message", [
    (dict(loss="ppo"), "unknown loss 'ppo'"),
    (dict(idft_gamma_min=2.5, idft_gamma_max=2.0), "--idft-gamma-min <= --idft-gamma-max"),
    (dict(idft_beta=0.0), "--idft-beta must be > 0"),
    (dict(idft_warmup_ratio=0.8, idft_transition_ratio=0.5), "--idft-warmup-ratio"),
    (dict(iw_level="word"), "--iw-level"),
    (dict(iw_clip_low=2.0, iw_clip_high=1.0), "--iw-clip-low <= --iw-clip-high"),
])
def test_bad_options_say_what_to_change(change, message):
    with pytest.raises(OpsftError, match=message):
        dataclasses.replace(LossConfig(), **change)  # checked when built


def test_sequence_importance_weights_by_hand():
    """w_b = clamp(exp(kappa * mean_t r_bt), 0, w_max), masked positions only; self-normalised to mean 1 over the
    sequences with positions (the iw-SFT control configuration: kappa 10, w_max 1000)."""
    from opsft.methods.losses import sequence_importance_weights

    r = torch.tensor([[0.1, 0.3, 9.0], [-0.2, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    weights, raw = sequence_importance_weights(r, mask, kappa=10.0, w_max=1000.0)
    expected_raw = [math.exp(10 * 0.2), math.exp(10 * -0.2), math.exp(10 * 0.5), 1.0]  # empty: exp(0)
    assert raw.tolist() == pytest.approx(expected_raw)
    assert weights.tolist() == pytest.approx([min(x, 1000.0) for x in expected_raw])
    normalised, _ = sequence_importance_weights(r, mask, kappa=10.0, w_max=1000.0, self_normalise=True)
    kept = [min(x, 1000.0) for x in expected_raw[:3]]
    assert normalised.tolist() == pytest.approx([3 * w / sum(kept) for w in kept] + [0.0])
    assert float(normalised[:3].mean()) == pytest.approx(1.0)
    clipped, _ = sequence_importance_weights(r, mask, kappa=10.0, w_max=2.0)
    assert clipped.tolist() == pytest.approx([2.0, math.exp(-2), 2.0, 1.0])


def test_token_importance_weights_by_hand():
    from opsft.methods.losses import token_importance_weights

    r = torch.tensor([0.05, -0.3, 0.2], dtype=torch.float64)
    weights, raw = token_importance_weights(r, low=0.0, high=2.0, kappa=10.0)
    assert raw.tolist() == pytest.approx([math.exp(0.5), math.exp(-3), math.exp(2)])
    assert weights.tolist() == pytest.approx([math.exp(0.5), math.exp(-3), 2.0])
