"""control/curation.py and control/objectives.py by hand and against a float64 reference, one episode at a time."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from opsft.control.curation import percentile_tiers, quality, top_fraction
from opsft.control.objectives import ObjectiveConfig, ema_update, episode_nll, objective
from opsft.runtime.errors import OpsftError


def test_percentile_tiers_duplicate_the_best_episodes():
    returns = np.arange(100.0)[::-1]  # episode i has return 99 - i
    chosen = percentile_tiers(returns)
    # percentiles 89.1, 94.05, 97.02: 10, 5 and 2 episodes
    assert list(chosen) == list(range(10)) + list(range(5)) + list(range(2))
    counts = np.bincount(chosen, minlength=100)
    assert counts[0] == counts[1] == 3 and counts[2] == 2 and counts[9] == 1 and counts[10:].sum() == 0
    with pytest.raises(OpsftError, match=r"\[0, 100\]"):
        percentile_tiers(returns, (90, 101))


def test_top_fraction_and_quality():
    returns = [3.0, 7.0, 1.0, 7.0, 5.0]
    assert list(top_fraction(returns, 0.4)) == [1, 3] and list(top_fraction(returns, 0.5)) == [1, 3, 4]
    assert quality(returns).tolist() == pytest.approx([1 / 3, 1.0, 0.0, 1.0, 2 / 3])
    assert quality([2.0, 2.0]).tolist() == [1.0, 1.0]
    with pytest.raises(OpsftError, match="fraction"):
        top_fraction(returns, 0.0)


def reference_loss(config, log_pi, lengths, proposal, ref, q):
    """The objective written out one episode at a time, float64, python loops."""
    E = len(lengths)
    if config.method == "bc_transitions":
        return -sum(log_pi[b, t] for b in range(E) for t in range(lengths[b])) / sum(lengths)
    if config.importance_weighted and config.iw_level == "sequence":
        raw = [math.exp(config.iw_temperature * sum(float(proposal[b, t] - ref[b, t]) for t in range(lengths[b]))
                        / lengths[b]) for b in range(E)]
        clipped = [min(w, config.iw_w_max) for w in raw]
        iw = [w * E / sum(clipped) for w in clipped]
    else:
        iw = [1.0] * E
    qw = [float(q[b]) for b in range(E)] if config.method in ("sftq", "iwsftq") else [1.0] * E
    total = 0
    for b in range(E):
        if config.importance_weighted and config.iw_level != "sequence":
            norm = lengths[b] if config.iw_level == "step" else max(lengths)
            total = total + qw[b] * sum(
                -min(math.exp(config.iw_temperature * float(proposal[b, t] - ref[b, t])), config.iw_step_clip)
                * log_pi[b, t] for t in range(lengths[b])) / norm
        else:
            total = total + iw[b] * qw[b] * sum(-log_pi[b, t] for t in range(lengths[b])) / lengths[b]
    return total / E


@pytest.mark.parametrize("method, level", [("bc", "sequence"), ("bc_transitions", "sequence"),
                                           ("filtered_bc", "sequence"), ("sftq", "sequence"),
                                           ("iwsft", "sequence"), ("iwsft", "step"), ("iwsft", "step_padded"),
                                           ("iwsftq", "sequence"), ("iwsftq", "step")])
def test_objectives_and_their_gradients_equal_the_reference(method, level):
    generator = torch.Generator().manual_seed(0)
    lengths = [3, 1, 4, 2]
    mask = torch.tensor([[1.0] * n + [0.0] * (4 - n) for n in lengths], dtype=torch.float64)
    logits = torch.randn(4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    log_pi = -torch.nn.functional.softplus(logits)  # any differentiable log-probs
    proposal = -torch.rand(4, 4, dtype=torch.float64, generator=generator)
    ref = proposal + 0.05 * torch.randn(4, 4, dtype=torch.float64, generator=generator)
    q = torch.rand(4, dtype=torch.float64, generator=generator)
    config = ObjectiveConfig(method=method, iw_level=level)
    loss, stats = objective(config, log_pi, mask, proposal_log_pi=proposal, reference_log_pi=ref, quality=q)
    expected = reference_loss(config, log_pi, lengths, proposal, ref, q)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    (gradient,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (expected_gradient,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-12)
    assert gradient[mask == 0].abs().sum() == 0  # padding has no gradient
    if method in ("iwsft", "iwsftq") and level == "sequence":
        assert float(stats["episode_weight"].mean()) == pytest.approx(1.0)


def test_iw_weights_at_the_authors_settings_follow_the_proposal():
    """Equal proposal and reference: every weight is 1 and iw-SFT is BC; a proposal that likes an episode more
    than the reference raises its weight (kappa 10)."""
    mask = torch.ones(2, 3, dtype=torch.float64)
    log_pi = torch.log(torch.full((2, 3), 0.5, dtype=torch.float64))
    same = torch.zeros(2, 3, dtype=torch.float64)
    config = ObjectiveConfig(method="iwsft")
    loss, stats = objective(config, log_pi, mask, proposal_log_pi=same, reference_log_pi=same)
    bc, _ = objective(ObjectiveConfig(method="bc"), log_pi, mask)
    assert float(loss) == pytest.approx(float(bc)) and stats["episode_weight"].tolist() == [1.0, 1.0]
    favoured = same.clone()
    favoured[0] += 0.1
    _, stats = objective(config, log_pi, mask, proposal_log_pi=favoured, reference_log_pi=same)
    w = math.exp(10 * 0.1)
    assert stats["episode_weight"].tolist() == pytest.approx([2 * w / (w + 1), 2 / (w + 1)])
    assert episode_nll(log_pi, mask).tolist() == pytest.approx([math.log(2)] * 2)


def test_ema_update_by_hand():
    policy = torch.nn.Linear(2, 1)
    proposal = copy.deepcopy(policy)
    before = [p.detach().clone() for p in proposal.parameters()]
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    ema_update(proposal, policy, 0.9)
    for q, old, p in zip(proposal.parameters(), before, policy.parameters()):
        torch.testing.assert_close(q, 0.9 * old + 0.1 * p)
