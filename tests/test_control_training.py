"""control/training.py: the authors' configuration step by step; sampled and episode batching agree in expectation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from opsft.control.data import episodes_from_transitions
from opsft.control.objectives import ObjectiveConfig, objective
from opsft.control.policy import GaussianPolicy
from opsft.control.training import Checkpoint, FrozenLogProbs, PairSampler, Schedule, sampled_loss, train


def tiny_episodes(lengths=(3, 1, 4, 2, 5), seed=0):
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    terminals = np.zeros(n, bool)
    terminals[np.cumsum(lengths) - 1] = True
    return episodes_from_transitions({
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-0.9, 0.9, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32), "terminals": terminals,
        "timeouts": np.zeros(n, bool)}, "tiny")


def tiny_policy(seed=0):
    torch.manual_seed(seed)
    return GaussianPolicy(3, 2, hidden=(8, 8))


def test_the_authors_iw_sft_configuration_step_by_step():
    """Episode batches, EMA proposal (0.9) updated before each loss, w_b = clamp(exp(10 * mean_t log q/p_ref), 0,
    1000) self-normalised over the batch, loss mean_b[-w_b sum_t log pi / T_b], Adam with warm-up: written out."""
    episodes = tiny_episodes()
    chosen = np.array([0, 2, 2, 3, 4, 4, 4])  # curated, with duplicates
    reference = tiny_policy(1)
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # let the policy differ from the reference, so that the weights are not all 1
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    schedule = Schedule(steps=4, learning_rate=1e-2, warmup_steps=2, cosine=True, batch_episodes=4)
    config = ObjectiveConfig(method="iwsft")
    ours = copy.deepcopy(policy)
    train(ours, episodes, chosen, config, schedule, reference=reference, seed=3)

    mine, proposal = copy.deepcopy(policy), copy.deepcopy(policy)
    optimizer = torch.optim.Adam(mine.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(3)
    for step in range(4):
        rate = 1e-2 * (step + 1) / 2 if step < 2 else 1e-2 * 0.5 * (1 + math.cos(math.pi * (step - 2) / 2))
        optimizer.param_groups[0]["lr"] = rate
        with torch.no_grad():
            for q, p in zip(proposal.parameters(), mine.parameters()):
                q.copy_(0.9 * q + 0.1 * p)
        batch = chosen[torch.randperm(len(chosen), generator=generator)[:4].numpy()]
        losses, raw = [], []
        for e in batch:
            s, a = torch.from_numpy(episodes.observations[e]), torch.from_numpy(episodes.actions[e])
            with torch.no_grad():
                ratio = (proposal.log_prob(s, a) - reference.log_prob(s, a)).sum() / len(a)
            raw.append(min(math.exp(10 * float(ratio)), 1000.0))
            losses.append(-mine.log_prob(s, a).sum() / len(a))
        weights = [w * len(raw) / sum(raw) for w in raw]
        loss = sum(w * l for w, l in zip(weights, losses)) / len(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for p, q in zip(ours.parameters(), mine.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(ours.parameters(), policy.parameters()))


def pair_probabilities(lengths, by_transition):
    """p(row, step) of sampled batching: a row uniformly (or by length), then a step uniformly."""
    total = sum(lengths)
    return {(r, t): (n / total if by_transition else 1 / len(lengths)) / n
            for r, n in enumerate(lengths) for t in range(n)}


@pytest.mark.parametrize("method, level", [("bc", "sequence"), ("bc_transitions", "sequence"), ("sftq", "sequence"),
                                           ("iwsft", "sequence"), ("iwsft", "step"), ("iwsftq", "sequence")])
def test_sampled_batching_is_the_episode_objective_in_expectation(method, level):
    """Sum over every (episode, step) pair of its sampling probability times its loss = the episode-batched loss
    over the whole curated list, in value and gradient."""
    episodes = tiny_episodes()
    chosen = np.array([0, 1, 2, 2, 4])
    policy, proposal, reference = tiny_policy(0), tiny_policy(1), tiny_policy(2)
    policy, proposal, reference = policy.double(), proposal.double(), reference.double()
    for e in range(len(episodes)):
        episodes.observations[e] = episodes.observations[e].astype(np.float64)
        episodes.actions[e] = episodes.actions[e].astype(np.float64)
    quality = torch.rand(len(episodes), dtype=torch.float64)
    config = ObjectiveConfig(method=method, iw_level=level)
    obs, act, mask = episodes.padded(chosen)
    with torch.no_grad():
        extra = {"proposal_log_pi": proposal.log_prob(obs, act), "reference_log_pi": reference.log_prob(obs, act)}
    episode_loss, _ = objective(config, policy.log_prob(obs, act), mask, quality=quality[chosen], **extra)
    sampler = PairSampler(episodes, chosen, FrozenLogProbs(reference, episodes))
    weights = sampler.episode_weights(config, proposal) if config.importance_weighted else None
    expected = 0
    lengths = list(episodes.lengths[chosen])
    for (row, step), p in pair_probabilities(lengths, method == "bc_transitions").items():
        rows, steps = torch.tensor([row]), torch.tensor([step])
        o, a = sampler.gather(rows, steps)
        with torch.no_grad():
            reference_log_pi = reference.log_prob(o, a)
        loss, _ = sampled_loss(config, policy.log_prob(o, a), rows, chosen, proposal=proposal, observations=o,
                               actions=a, quality=quality, episode_weights=weights, reference_log_pi=reference_log_pi)
        expected = expected + p * loss
    assert float(expected.detach()) == pytest.approx(float(episode_loss.detach()), rel=1e-10)
    grads = torch.autograd.grad(episode_loss, list(policy.parameters()), retain_graph=True)
    sampled_grads = torch.autograd.grad(expected, list(policy.parameters()))
    for g, h in zip(grads, sampled_grads):
        torch.testing.assert_close(g, h, rtol=1e-9, atol=1e-12)


def test_pairs_are_drawn_with_those_probabilities():
    episodes = tiny_episodes()
    chosen = np.array([0, 1, 4])
    sampler = PairSampler(episodes, chosen)
    generator = torch.Generator().manual_seed(0)
    for by_transition in (False, True):
        rows, steps = sampler.draw(60000, generator, by_transition)
        counts = {}
        for r, t in zip(rows.tolist(), steps.tolist()):
            counts[(r, t)] = counts.get((r, t), 0) + 1
        probabilities = pair_probabilities(list(episodes.lengths[chosen]), by_transition)
        assert set(counts) == set(probabilities)
        for pair, p in probabilities.items():
            assert counts[pair] / 60000 == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / 60000))


def test_step_padded_exists_only_with_episode_batching():
    episodes = tiny_episodes()
    with pytest.raises(ValueError, match="only with episode batching"):
        train(tiny_policy(), episodes, [0, 1], ObjectiveConfig(method="iwsft", iw_level="step_padded"),
              Schedule(steps=1, learning_rate=1e-3, batching="sampled", batch_pairs=4), reference=tiny_policy(1))


def test_cached_reference_log_probs_are_the_references_own():
    """p_ref is frozen, so training computes it once per episode; the cached values are log p_ref, padded, at
    sampled pairs and summed over episodes."""
    episodes = tiny_episodes()
    chosen = np.array([0, 2, 2, 4])
    reference = tiny_policy(2)
    frozen = FrozenLogProbs(reference, episodes)
    sampler = PairSampler(episodes, chosen, frozen)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):  # the second draw reads the cache
        rows, steps = sampler.draw(32, generator)
        obs, act = sampler.gather(rows, steps)
        with torch.no_grad():
            torch.testing.assert_close(sampler.reference_at(rows, steps), reference.log_prob(obs, act))
    assert set(frozen.by_episode) <= {0, 2, 4}
    obs, act, mask = episodes.padded(chosen)
    with torch.no_grad():
        expected = reference.log_prob(obs, act) * mask
    torch.testing.assert_close(frozen.padded(chosen, mask.shape[1]), expected)
    torch.testing.assert_close(frozen.sums(chosen), expected.sum(-1).double(), rtol=1e-6, atol=1e-5)


class _Killed(Exception):
    pass


class _KillAt:
    """A progress bar that stops training after `steps` updates, as a kill would."""

    def __init__(self, steps):
        self.left = steps

    def update(self, n):
        self.left -= n
        if self.left <= 0:
            raise _Killed


@pytest.mark.parametrize("batching,level", [("episode", "sequence"), ("sampled", "sequence"), ("sampled", "step")])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, batching, level):
    """Killed after 7 of 12 steps (checkpoint every 5), rerun: the same parameters as one run without a stop,
    for iw-SFT (its proposal, its sampled episode weights, the optimiser and the random draws are all saved)."""
    episodes, chosen = tiny_episodes(), np.array([0, 2, 2, 4])
    config = ObjectiveConfig(method="iwsft", iw_level=level)
    schedule = Schedule(steps=12, learning_rate=1e-2, warmup_steps=3, cosine=True, batching=batching,
                        batch_episodes=2, batch_pairs=8, refresh_every=4)
    reference = tiny_policy(1)
    whole = tiny_policy(0)
    whole_log = train(whole, episodes, chosen, config, schedule, reference=reference, seed=3, log_every=1)
    checkpoint = Checkpoint(tmp_path / "state.pt", every=5)
    with pytest.raises(_Killed):
        train(tiny_policy(0), episodes, chosen, config, schedule, reference=reference, seed=3, log_every=1,
              checkpoint=checkpoint, progress=_KillAt(7))
    resumed = tiny_policy(0)
    log = train(resumed, episodes, chosen, config, schedule, reference=reference, seed=3, log_every=1,
                checkpoint=checkpoint)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [entry["step"] for entry in log] == list(range(1, 13)) and log == whole_log
