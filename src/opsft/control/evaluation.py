"""Evaluating a policy in its gymnasium environment: the deterministic action mu(s), undiscounted returns,
one episode per seed (seed, seed + 1, ...), and their mean with a 95 % interval over episodes."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..runtime.errors import OpsftError
from .policy import GaussianPolicy


def rollout_returns(policy, env_id: str, episodes: int = 100, seed: int = 0,
                    max_episode_steps: int | None = None, progress=None) -> np.ndarray:
    """Undiscounted return of each of `episodes` episodes, acting with mu(s) (`policy` a GaussianPolicy), or
    with `policy(observation) -> action` (any other actor, e.g. a d3rlpy baseline)."""
    import gymnasium as gym

    act = policy_actor(policy) if isinstance(policy, GaussianPolicy) else policy

    try:
        env = gym.make(env_id, **({"max_episode_steps": max_episode_steps} if max_episode_steps else {}))
    except gym.error.Error as e:
        raise OpsftError(f"--env {env_id}: {e}") from None
    returns = []
    for i in range(episodes):
        observation, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action = act(observation)
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        if progress is not None:
            progress.update(1)
    env.close()
    return np.array(returns)


def policy_actor(policy: GaussianPolicy):
    """observation -> mu(s), as a numpy array."""
    dtype = next(policy.parameters()).dtype
    return lambda observation: policy.act(torch.as_tensor(observation, dtype=dtype)).numpy()


def return_summary(returns) -> dict:
    """mean, std and the 95 % half-width over episodes (normal approximation)."""
    returns = np.asarray(returns, dtype=np.float64)
    std = float(returns.std(ddof=1)) if len(returns) > 1 else 0.0
    return {"episodes": len(returns), "mean": float(returns.mean()), "std": std,
            "ci95_half_width": 1.959964 * std / math.sqrt(len(returns))}
