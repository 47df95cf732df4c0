"""The Gaussian MLP policy of the iw-SFT control experiments, and DDT for it.

    pi(a | s) = prod_i Normal(a_i; mu_i(s), sigma_i),   mu(s) = c + h * tanh(W f(s) + b),   sigma = exp(clamp(l, -5, 2))

f: an MLP (256 x 3, ReLU) of the raw observation (no normalisation); l: one log-std per action dimension,
independent of the state, initialised at 0; c, h: the centre and half-width of the action box ([-1, 1]: c = 0,
h = 1, the authors' setting). log pi sums over action dimensions (nats). The deterministic action is mu(s).

DDT for a policy (none had it): per step, phi_t = log pi(a_t | s_t) + H(pi(. | s_t)), with the Gaussian's
entropy in closed form, H = sum_i (log sigma_i + (1 + log 2 pi) / 2). On the policy's own actions
E[phi_t] = 0 exactly (each dimension contributes (1 - z^2) / 2, z ~ N(0, 1)); demonstrations that lie away
from the policy score below 0. The same statistic as `opsft.methods.ddt.token_phi`, with densities for probabilities.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..methods.ddt import token_phi

LOG_STD_BOUNDS = (-5.0, 2.0)


class GaussianPolicy(nn.Module):
    def __init__(self, observation_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256, 256),
                 action_low: float | list[float] = -1.0, action_high: float | list[float] = 1.0):
        super().__init__()
        self.shape = {"observation_dim": observation_dim, "action_dim": action_dim, "hidden": tuple(hidden),
                      "action_low": action_low, "action_high": action_high}
        layers, width = [], observation_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.body = nn.Sequential(*layers)
        self.mean_head = nn.Linear(width, action_dim)
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        low = torch.as_tensor(action_low, dtype=torch.float32).expand(action_dim)
        high = torch.as_tensor(action_high, dtype=torch.float32).expand(action_dim)
        self.register_buffer("action_centre", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def distribution(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(s) [..., a] and log sigma [a] (clamped to LOG_STD_BOUNDS)."""
        mean = self.action_centre + self.action_half_width * torch.tanh(self.mean_head(self.body(observations)))
        return mean, self.log_std.clamp(*LOG_STD_BOUNDS)

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a | s), summed over action dimensions: [...] for observations [..., d], actions [..., a]."""
        mean, log_std = self.distribution(observations)
        return gaussian_log_prob(actions, mean, log_std)

    def entropy(self, observations: torch.Tensor) -> torch.Tensor:
        """H(pi(. | s)) [...] (nats); the same for every state, since sigma does not depend on it."""
        return gaussian_entropy(self.log_std.clamp(*LOG_STD_BOUNDS)).expand(observations.shape[:-1])

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        """The deterministic action mu(s) (evaluation)."""
        return self.distribution(observations)[0]

    @torch.no_grad()
    def sample(self, observations: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_std = self.distribution(observations)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + log_std.exp() * noise

    def phi(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """DDT per step: log pi(a | s) + H(pi(. | s)) [...] (nats)."""
        return token_phi(self.log_prob(observations, actions), self.entropy(observations))


def gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """sum_i log Normal(a_i; mean_i, exp(log_std_i)) over the last dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """sum_i (log sigma_i + (1 + log 2 pi) / 2) over the last dimension."""
    return (log_std + 0.5 * (1 + math.log(2 * math.pi))).sum(-1)


def save_policy(policy: GaussianPolicy, path, **meta) -> None:
    """The policy's weights and shape (and `meta`, e.g. the env id) in one torch file, written whole."""
    import os
    from pathlib import Path

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": policy.state_dict(), "shape": policy.shape, "meta": meta}, tmp)
    os.replace(tmp, path)


def load_policy(path) -> tuple[GaussianPolicy, dict]:
    """A policy saved by save_policy, and its meta."""
    import pickle

    from ..runtime.errors import OpsftError

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        policy = GaussianPolicy(**saved["shape"])
        policy.load_state_dict(saved["state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as e:
        raise OpsftError(f"{path}: not a policy saved by opsft control ({' '.join(str(e).split())[:200]})") from None
    return policy, saved["meta"]
