"""The control objectives, over a policy's log-probs of whole episodes: log_pi [E, T], mask [E, T] (1 on an
episode's T_b steps, 0 on padding). Episode-weighted, as the iw-SFT authors train: every episode counts once,
whatever its length.

    nll_b            = -sum_t log pi_bt / T_b                          (the episode's mean NLL)
    bc, filtered_bc  L = mean_b nll_b          (bc_transitions: -sum_bt log pi_bt / sum_b T_b)
    iwsft, sequence  L = mean_b w_b nll_b,     w_b = clamp(exp(kappa * sum_t r_bt / T_b), 0, w_max), self-normalised
                                               to mean 1 over the batch;  r_bt = log q_bt - log p_ref,bt
    iwsft, step      L = mean_b [-sum_t w_bt log pi_bt / T_b],  w_bt = clamp(exp(kappa * r_bt), 0, step_clip)
                     (variant `step_padded`: divided by the longest T in the batch instead of T_b, as the
                     authors' code does: padding counts)
    sftq             L = mean_b q_b nll_b,     q_b the episode's quality (curation.quality)
    iwsftq           L = mean_b w_b q_b nll_b

q is the proposal, an exponential moving average of the policy (`ema_update`), p_ref the frozen BC policy.
The importance weights are the loss family's own (`opsft.methods.losses`); no gradient flows through them. The
authors' configuration: kappa 10, w_max 1000, step_clip 2, EMA decay 0.9.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods.losses import sequence_importance_weights, token_importance_weights
from ..runtime.options import Options, option

METHODS = ("bc", "bc_transitions", "filtered_bc", "iwsft", "sftq", "iwsftq")


@dataclass
class ObjectiveConfig(Options):
    method: str = option("iwsft", "bc (episode-weighted), bc_transitions, filtered_bc, iwsft, sftq or iwsftq",
                         choices=list(METHODS))
    iw_level: str = option("sequence", "iw-SFT weight per episode, per step, or per step over the padded length "
                                       "(the authors' code)", choices=["sequence", "step", "step_padded"])
    iw_temperature: float = option(10.0, "kappa in exp(kappa * log ratio)", at_least=0)
    iw_w_max: float = option(1000.0, "largest episode weight (before self-normalisation)", above=0)
    iw_step_clip: float = option(2.0, "largest step weight", above=0)
    ema_decay: float = option(0.9, "proposal q <- decay * q + (1 - decay) * policy, before each loss", at_least=0,
                              below=1)

    @property
    def importance_weighted(self) -> bool:
        return self.method in ("iwsft", "iwsftq")


def episode_nll(log_pi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """nll_b = -sum_t log pi_bt / T_b, [E] (0 for an empty row)."""
    mask = mask.to(log_pi.dtype)
    return -(log_pi * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def objective(config: ObjectiveConfig, log_pi: torch.Tensor, mask: torch.Tensor, *,
              proposal_log_pi: torch.Tensor | None = None, reference_log_pi: torch.Tensor | None = None,
              quality: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of `config.method` on one batch of episodes, and detached statistics (the weights)."""
    mask = mask.to(log_pi.dtype)
    stats: dict[str, torch.Tensor] = {}
    if config.method == "bc_transitions":
        return -(log_pi * mask).sum() / mask.sum().clamp(min=1), stats
    weights = torch.ones(log_pi.shape[0], dtype=log_pi.dtype, device=log_pi.device)
    if config.method in ("sftq", "iwsftq"):
        if quality is None:
            raise ValueError(f"{config.method} needs each episode's quality")
        weights = weights * quality.to(log_pi.dtype)
    if config.importance_weighted:
        if proposal_log_pi is None or reference_log_pi is None:
            raise ValueError("iw-SFT needs the proposal's and the reference's log-probs")
        log_ratio = (proposal_log_pi - reference_log_pi).detach() * mask
        if config.iw_level == "sequence":
            sequence, raw = sequence_importance_weights(log_ratio, mask, kappa=config.iw_temperature,
                                                        w_max=config.iw_w_max, self_normalise=True)
            stats.update(episode_weight=sequence, clipped=raw > config.iw_w_max)
            weights = weights * sequence
        else:
            steps, raw = token_importance_weights(log_ratio, low=0.0, high=config.iw_step_clip,
                                                  kappa=config.iw_temperature)
            stats.update(step_weight=steps[mask.bool()], clipped=(raw > config.iw_step_clip)[mask.bool()])
            lengths = mask.sum(-1).clamp(min=1) if config.iw_level == "step" else torch.full_like(
                weights, float(mask.shape[1]))
            per_episode = -(steps * log_pi * mask).sum(-1) / lengths
            return (weights * per_episode).mean(), {k: v.detach() for k, v in stats.items()}
    return (weights.detach() * episode_nll(log_pi, mask)).mean(), {k: v.detach() for k, v in stats.items()}


@torch.no_grad()
def ema_update(proposal: torch.nn.Module, policy: torch.nn.Module, decay: float) -> None:
    """q <- decay * q + (1 - decay) * policy, parameter by parameter (buffers copied)."""
    for q, p in zip(proposal.parameters(), policy.parameters(), strict=True):
        q.mul_(decay).add_(p.detach(), alpha=1 - decay)
    for q, p in zip(proposal.buffers(), policy.buffers(), strict=True):
        q.copy_(p)
