"""Filtered behaviour cloning beats behaviour cloning on the scripted mixed-quality InvertedPendulum set (its mean
skill is 0: cloning every episode alike learns a controller that drops the pole; the top returns are skilled)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from opsft.control.curation import percentile_tiers
from opsft.control.data import episodes_from_transitions
from opsft.control.evaluation import return_summary, rollout_returns
from opsft.control.generate import scripted_pendulum
from opsft.control.objectives import ObjectiveConfig
from opsft.control.training import Schedule, new_policy, train


@pytest.fixture
def one_thread():
    """A 64-wide MLP is fastest on one thread (docs/control.md); restored afterwards for the other tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_filtered_bc_and_iw_sft_beat_bc_on_mixed_quality_data(one_thread):
    arrays, skills = scripted_pendulum(60, seed=0, max_episode_steps=200)
    episodes = episodes_from_transitions(arrays, "scripted")
    assert len(episodes) == 60 and abs(float(np.mean(skills))) < 0.2
    curated = percentile_tiers(episodes.returns)
    assert np.all(skills[curated] > 0.2)  # the curated episodes are the skilled ones
    reference = new_policy(episodes, hidden=(64, 64), action_low=-3, action_high=3)
    train(reference, episodes, np.arange(len(episodes)), ObjectiveConfig(method="bc"),
          Schedule(steps=800, learning_rate=1e-3, batching="sampled", batch_pairs=256))
    scores = {"bc": rollout_returns(reference, "InvertedPendulum-v5", 10, seed=1000, max_episode_steps=200)}
    for method in ("filtered_bc", "iwsft"):
        policy = copy.deepcopy(reference)
        train(policy, episodes, curated, ObjectiveConfig(method=method),
              Schedule(steps=300, learning_rate=1e-3, batching="sampled", batch_pairs=256), reference=reference)
        scores[method] = rollout_returns(policy, "InvertedPendulum-v5", 10, seed=1000, max_episode_steps=200)
    means = {method: return_summary(r)["mean"] for method, r in scores.items()}
    assert means["filtered_bc"] >= 180 and means["filtered_bc"] >= means["bc"] + 80, means
    assert means["iwsft"] >= 180, means
