"""control/policy.py against torch.distributions in float64; DDT phi of a policy: mean 0 on its own actions."""

from __future__ import annotations

import math

import pytest
import torch

from opsft.control.policy import GaussianPolicy


def policy(seed: int = 0, **kwargs) -> GaussianPolicy:
    torch.manual_seed(seed)
    return GaussianPolicy(5, 3, hidden=(16, 16), **kwargs).double()


def test_log_prob_and_entropy_equal_torch_normal_in_float64():
    pi = policy()
    with torch.no_grad():
        pi.log_std.copy_(torch.tensor([-0.3, 0.2, -7.0], dtype=torch.float64))  # the last one is clamped to -5
    s, a = torch.randn(4, 6, 5, dtype=torch.float64), torch.randn(4, 6, 3, dtype=torch.float64)
    body = torch.nn.Sequential(*pi.body, pi.mean_head)
    mean = torch.tanh(body(s))
    std = torch.tensor([-0.3, 0.2, -5.0], dtype=torch.float64).exp()
    reference = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(pi.log_prob(s, a), reference.log_prob(a).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pi.entropy(s), reference.entropy().sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pi.phi(s, a), reference.log_prob(a).sum(-1) + reference.entropy().sum(-1),
                               rtol=1e-12, atol=1e-12)
    assert pi.entropy(s).shape == (4, 6)


def test_the_mean_spans_the_action_box():
    pi = policy(action_low=-3.0, action_high=3.0)
    with torch.no_grad():
        pi.mean_head.bias.fill_(50.0)  # tanh saturates
    assert torch.allclose(pi.act(torch.randn(2, 5, dtype=torch.float64)), torch.full((2, 3), 3.0, dtype=torch.float64))
    box = policy(action_low=[-1.0, 0.0, 2.0], action_high=[1.0, 4.0, 3.0])
    with torch.no_grad():
        box.mean_head.weight.zero_()
        box.mean_head.bias.zero_()
    assert box.act(torch.zeros(1, 5, dtype=torch.float64)).tolist() == [[0.0, 2.0, 2.5]]  # the box's centre


def test_phi_is_zero_on_the_policys_own_actions_and_negative_on_anothers():
    """E[phi] = 0 on own samples (each dimension (1 - z^2) / 2, variance 1/2); another policy's actions score
    clearly below 0."""
    pi, other = policy(0), policy(1)
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(20000, 5, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        own = pi.phi(s, pi.sample(s, generator))
        theirs = pi.phi(s, other.sample(s, generator) + 0.5)
    standard_error = own.std() / math.sqrt(len(own))
    assert abs(float(own.mean())) < 4 * float(standard_error)
    assert float(own.var()) == pytest.approx(3 * 0.5, rel=0.05)
    assert float(theirs.mean()) < -0.2 and float(theirs.mean()) < float(own.mean()) - 20 * float(standard_error)
