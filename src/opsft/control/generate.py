"""Datasets made here (D4RL is not reachable offline), in D4RL layout.

Scripted mixed-quality InvertedPendulum (seconds; for CI and the docs): each episode acts with
a = clip(s * K . o + sigma * eps, -3, 3), K = (1, 20, 2, 2) a linear controller that balances the pole, s drawn
uniformly from [-1, 1] per episode (the episode's skill: s >= 0.3 balances, s <= 0 falls within ~20 steps),
sigma = 0.3, eps ~ N(0, 1). Across episodes the mean skill is 0, so cloning every episode alike learns a
controller that does nothing useful, while the high-return episodes are the skilled ones: curation has
something to find.
"""

from __future__ import annotations

import numpy as np

CONTROLLER = np.array([1.0, 20.0, 2.0, 2.0])


def scripted_pendulum(episodes: int = 200, seed: int = 0, max_episode_steps: int = 1000,
                      noise: float = 0.3) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """D4RL-layout arrays of `episodes` InvertedPendulum-v5 episodes, and each episode's skill s."""
    import gymnasium as gym

    env = gym.make("InvertedPendulum-v5", max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(seed)
    columns = {name: [] for name in ("observations", "actions", "rewards", "terminals", "timeouts")}
    skills = rng.uniform(-1, 1, size=episodes)
    for i, skill in enumerate(skills):
        observation, _ = env.reset(seed=seed * 100_003 + i)
        done = False
        while not done:
            action = np.clip(skill * CONTROLLER @ observation + noise * rng.normal(), -3, 3)
            action = np.array([action], np.float32)
            next_observation, reward, terminated, truncated, _ = env.step(action)
            for name, value in (("observations", observation), ("actions", action), ("rewards", reward),
                                ("terminals", terminated), ("timeouts", truncated and not terminated)):
                columns[name].append(value)
            observation, done = next_observation, terminated or truncated
    env.close()
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    arrays["observations"] = arrays["observations"].astype(np.float32)
    arrays["rewards"] = arrays["rewards"].astype(np.float32)
    return arrays, skills
