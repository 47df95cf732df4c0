"""Training a policy from episodes: stage A (the reference, BC on all data) and stage C (a method on the curated
episodes), as in the iw-SFT paper's control experiments, with two ways to batch.

    episode batching (the authors'): each step takes `batch_episodes` whole episodes, padded, and applies the
        objective (objectives.py) to them; iw-SFT's episode weights are self-normalised over that batch.
    sampled batching (the CPU default): each step takes `batch_pairs` (episode, step) pairs, the episode drawn
        uniformly from the curated list (duplicates included), the step uniformly within it, so that
        E[-w_b log pi_bt] = mean_b w_b nll_b: the episode-weighted objective, unbiased (bc_transitions draws
        transitions uniformly instead). Episode weights come from the whole curated list, self-normalised over
        it, and are recomputed every `refresh_every` steps (the proposal moves slowly: at the authors' 4e-5
        and EMA 0.9, 250 steps); step weights are exact.

Stage A: Adam (lr 1e-3), 10,000 steps of 128 episodes. Stage C: the policy and the proposal start from the
reference, which stays frozen; Adam (lr 4e-5), 300 warm-up steps then a cosine to 0 over 2,000 steps, batches
of 256 episodes. The proposal is updated (EMA) before each loss.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..methods.losses import sequence_importance_weights, token_importance_weights
from .data import Episodes
from .objectives import ObjectiveConfig, ema_update, objective
from .policy import GaussianPolicy


@dataclass
class Schedule:
    steps: int
    learning_rate: float
    warmup_steps: int = 0
    cosine: bool = False
    batching: str = "episode"  # or "sampled"
    batch_episodes: int = 256
    batch_pairs: int = 256
    refresh_every: int = 250

    def rate(self, step: int) -> float:
        """The learning rate at `step` (0-based): linear warm-up, then constant or a cosine to 0."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if not self.cosine:
            return self.learning_rate
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


REFERENCE = Schedule(steps=10_000, learning_rate=1e-3, batch_episodes=128)
CURATED = Schedule(steps=2_000, learning_rate=4e-5, warmup_steps=300, cosine=True, batch_episodes=256)


def new_policy(episodes: Episodes, hidden=(256, 256, 256), action_low=-1.0, action_high=1.0,
               seed: int = 0) -> GaussianPolicy:
    torch.manual_seed(seed)
    return GaussianPolicy(episodes.observations[0].shape[1], episodes.actions[0].shape[1], tuple(hidden),
                          action_low, action_high)


@dataclass
class Checkpoint:
    """Where and how often train() saves its whole state: policy, proposal, optimiser, random generator, step, log,
    the sampled episode weights and the seconds spent training so far (over every process that worked on it). A
    train() given a checkpoint that exists continues from it, and ends where an uninterrupted run ends."""
    path: Path
    every: int = 500

    def due(self, step: int, steps: int) -> bool:
        return (step + 1) % self.every == 0 or step + 1 == steps

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=False) if self.path.exists() else None


def train(policy: GaussianPolicy, episodes: Episodes, chosen, config: ObjectiveConfig, schedule: Schedule, *,
          reference: GaussianPolicy | None = None, quality=None, seed: int = 0, log_every: int = 0,
          progress=None, checkpoint: Checkpoint | None = None) -> list[dict]:
    """Train `policy` in place on the episodes at `chosen` (indices, duplicates kept) with `config.method`;
    `reference` is p_ref (iw-SFT), `quality` [E] each episode's quality (SFT(Q)). Returns the log."""
    chosen = np.asarray(chosen, dtype=np.int64)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=schedule.learning_rate)
    proposal = copy.deepcopy(policy).requires_grad_(False) if config.importance_weighted else None
    quality = None if quality is None else torch.as_tensor(np.asarray(quality), dtype=torch.float32)
    frozen = FrozenLogProbs(reference, episodes) if proposal is not None else None
    sampler = PairSampler(episodes, chosen, frozen) if schedule.batching == "sampled" else None
    episode_weights, log, start, clock, carried = None, [], 0, time.perf_counter(), 0.0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        carried = saved["seconds"]
        policy.load_state_dict(saved["policy"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        if proposal is not None:
            proposal.load_state_dict(saved["proposal"])
        episode_weights, log, start = saved["episode_weights"], saved["log"], saved["step"]
        if progress is not None:
            progress.update(start)
    for step in range(start, schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.rate(step)
        if proposal is not None:
            ema_update(proposal, policy, config.ema_decay)
        if sampler is None:
            batch = chosen[_draw(len(chosen), schedule.batch_episodes, generator)]
            obs, act, mask = episodes.padded(batch)
            log_pi = policy.log_prob(obs, act)
            with torch.no_grad():
                extra = {"proposal_log_pi": proposal.log_prob(obs, act), "reference_log_pi": frozen.padded(
                    batch, mask.shape[1])} if proposal is not None else {}
            loss, stats = objective(config, log_pi, mask, quality=None if quality is None else quality[batch],
                                    **extra)
        else:
            if proposal is not None and config.iw_level == "sequence" and step % schedule.refresh_every == 0:
                episode_weights = sampler.episode_weights(config, proposal)
            loss, stats = sampler.loss(policy, config, schedule.batch_pairs, generator, proposal=proposal,
                                       quality=quality, episode_weights=episode_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log_every and (step % log_every == 0 or step == schedule.steps - 1):
            entry = {"step": step + 1, "loss": float(loss.detach()), "learning_rate": schedule.rate(step)}
            entry.update({f"{k}_mean": float(v.float().mean()) for k, v in stats.items() if v.numel()})
            log.append(entry)
        if checkpoint is not None and checkpoint.due(step, schedule.steps):
            checkpoint.save({"step": step + 1, "policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
                             "generator": generator.get_state(), "log": log, "episode_weights": episode_weights,
                             "proposal": None if proposal is None else proposal.state_dict(),
                             "seconds": carried + time.perf_counter() - clock})
        if progress is not None:
            progress.update(1)
    return log


def _draw(n: int, k: int, generator: torch.Generator) -> np.ndarray:
    """k indices of range(n) without replacement (all of them, shuffled, when k >= n)."""
    return torch.randperm(n, generator=generator)[:k].numpy()


class FrozenLogProbs:
    """log pi(a_t | s_t) of a frozen policy (p_ref) on each episode's steps, computed once per episode."""

    def __init__(self, policy: GaussianPolicy, episodes: Episodes):
        self.policy, self.episodes = policy, episodes
        self.by_episode: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def of(self, episode: int) -> torch.Tensor:
        if episode not in self.by_episode:
            self.by_episode[episode] = self.policy.log_prob(torch.from_numpy(self.episodes.observations[episode]),
                                                            torch.from_numpy(self.episodes.actions[episode]))
        return self.by_episode[episode]

    def padded(self, episodes, longest: int) -> torch.Tensor:
        """[len(episodes), longest], 0 on padding."""
        padded = torch.zeros(len(episodes), longest, dtype=next(self.policy.parameters()).dtype)
        for row, e in enumerate(episodes):
            values = self.of(int(e))
            padded[row, :len(values)] = values
        return padded

    def sums(self, episodes) -> torch.Tensor:
        """sum_t over each episode [N] (float64)."""
        return torch.stack([self.of(int(e)).sum(dtype=torch.float64) for e in episodes])


class PairSampler:
    """(episode, step) pairs of the curated list, for sampled batching (see the module doc); `reference`: p_ref's
    log-probs, for iw-SFT."""

    def __init__(self, episodes: Episodes, chosen: np.ndarray, reference: FrozenLogProbs | None = None):
        self.episodes, self.chosen, self.reference = episodes, chosen, reference
        self.lengths = torch.as_tensor(episodes.lengths[chosen])
        # every episode's steps in one stream, so that a batch of pairs is one indexing operation
        self.episode_starts = np.concatenate([[0], np.cumsum(episodes.lengths)[:-1]])
        self.starts = torch.as_tensor(self.episode_starts[chosen])
        self.observations = torch.from_numpy(np.concatenate(episodes.observations))
        self.actions = torch.from_numpy(np.concatenate(episodes.actions))
        self.chosen_tensor = torch.as_tensor(chosen)
        self._reference_stream = None

    def draw(self, n: int, generator: torch.Generator, by_transition: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions in the curated list and step indices: episodes uniformly (or in proportion to their
        length: transitions uniformly), then a step uniformly within the episode."""
        if by_transition:
            rows = torch.multinomial(self.lengths.double(), n, replacement=True, generator=generator)
        else:
            rows = torch.randint(len(self.chosen), (n,), generator=generator)
        steps = (torch.rand(n, generator=generator, dtype=torch.float64) * self.lengths[rows]).long()
        return rows, steps

    def gather(self, rows: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Observations and actions at the pairs."""
        at = self.starts[rows] + steps
        return self.observations[at], self.actions[at]

    def reference_at(self, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """log p_ref at the pairs (each curated episode's computed once, by the frozen cache)."""
        if self._reference_stream is None:
            stream = torch.zeros(len(self.actions), dtype=next(self.reference.policy.parameters()).dtype)
            for e in np.unique(self.chosen):
                first = int(self.episode_starts[e])
                values = self.reference.of(int(e))
                stream[first:first + len(values)] = values
            self._reference_stream = stream
        return self._reference_stream[self.starts[rows] + steps]

    @torch.no_grad()
    def episode_weights(self, config: ObjectiveConfig, proposal: GaussianPolicy) -> torch.Tensor:
        """iw-SFT's episode weights over the whole curated list, self-normalised over it (objectives.py). The
        reference is frozen, so its log-probs are computed once; the proposal's at every refresh."""
        mean_ratio = (self.log_prob_sums(proposal) - self.reference.sums(self.chosen)) / self.lengths
        weights, _ = sequence_importance_weights(mean_ratio[:, None], torch.ones_like(mean_ratio[:, None]),
                                                 kappa=config.iw_temperature, w_max=config.iw_w_max,
                                                 self_normalise=True)
        return weights

    @torch.inference_mode()
    def log_prob_sums(self, policy: GaussianPolicy, chunk: int = 16_384) -> torch.Tensor:
        """sum_t log pi(a_t | s_t) of each curated episode [len(chosen)] (float64): one pass over the distinct
        episodes' steps, `chunk` steps at a time, summed per episode."""
        distinct, inverse = np.unique(self.chosen, return_inverse=True)
        lengths = torch.as_tensor(self.episodes.lengths[distinct])
        steps = torch.cat([torch.arange(int(self.episode_starts[e]), int(self.episode_starts[e]) + int(n))
                           for e, n in zip(distinct, lengths)])
        owner = torch.repeat_interleave(torch.arange(len(distinct)), lengths)
        sums = torch.zeros(len(distinct), dtype=torch.float64)
        for first in range(0, len(steps), chunk):
            at = steps[first:first + chunk]
            sums.index_add_(0, owner[first:first + chunk],
                            policy.log_prob(self.observations[at], self.actions[at]).double())
        return sums[torch.as_tensor(inverse)]

    def loss(self, policy: GaussianPolicy, config: ObjectiveConfig, n: int, generator: torch.Generator, *,
             proposal=None, quality=None, episode_weights=None):
        rows, steps = self.draw(n, generator, by_transition=config.method == "bc_transitions")
        obs, act = self.gather(rows, steps)
        reference_log_pi = self.reference_at(rows, steps) if \
            config.importance_weighted and config.iw_level == "step" else None
        return sampled_loss(config, policy.log_prob(obs, act), rows, self.chosen_tensor, proposal=proposal,
                            observations=obs, actions=act, quality=quality, episode_weights=episode_weights,
                            reference_log_pi=reference_log_pi)


def sampled_loss(config: ObjectiveConfig, log_pi: torch.Tensor, rows: torch.Tensor, chosen, *,
                 proposal=None, observations=None, actions=None, quality=None, episode_weights=None,
                 reference_log_pi=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """mean_i [-w_i log pi_i] over sampled pairs i: w_i = the episode's weight (iw-SFT sequence, from the whole
    curated list), times its quality (SFT(Q)), times the step's own weight (iw-SFT step, from the proposal at the
    pairs and `reference_log_pi`, log p_ref at them)."""

    weights, stats = torch.ones_like(log_pi), {}
    if config.method in ("sftq", "iwsftq"):
        weights = weights * quality[torch.as_tensor(chosen)[rows]].to(log_pi.dtype)
    if config.importance_weighted:
        if config.iw_level == "sequence":
            weights = weights * episode_weights[rows].to(log_pi.dtype)
            stats["episode_weight"] = episode_weights[rows]
        elif config.iw_level == "step":
            with torch.no_grad():
                ratio = proposal.log_prob(observations, actions) - reference_log_pi
            steps, _ = token_importance_weights(ratio, low=0.0, high=config.iw_step_clip, kappa=config.iw_temperature)
            weights = weights * steps
            stats["step_weight"] = steps
        else:
            raise ValueError("iw_level step_padded counts padding: it exists only with episode batching")
    return (weights.detach() * -log_pi).mean(), {k: v.detach() for k, v in stats.items()}
