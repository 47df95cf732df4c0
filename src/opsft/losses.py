"""The per-token weighted SFT loss family (SPEC §2).

    L = (1/N) sum_t w_t * (-log p_theta(y_t))      over the completion tokens of the (global) batch

w_t carries no gradient and N counts the completion tokens of the whole accumulated, data-parallel
batch (TRL's `num_items_in_batch`), so gradient accumulation and the number of processes leave the
result unchanged. The gradient with respect to the logits z_t is w_t * (softmax(z_t) - onehot(y_t)) / N.

| method       | w_t                                                                              |
|--------------|----------------------------------------------------------------------------------|
| sft          | 1                                                                                |
| dft          | sg(p_t(y_t))                                                                     |
| idft         | sg(p_t(y_t) ** gamma_t), gamma_t = 1 + lam(s) * (clamp(exp(-phi_t / beta), gamma_min, gamma_max) - 1) |
| iwsft (seq.) | sg(clamp(exp(kappa * mean_t[log p_theta - log p_ref]), 0, w_max)), per example   |
| iwsft (tok.) | sg(clamp(exp(log p_theta - log p_ref), clip_low, clip_high))                     |
| sftq         | q_b, the example's quality score (or sample examples in proportion to q_b)       |

`idft_legacy` is the authors' pre-2026-03-13 IDFT, with p ** gamma left inside the gradient (only gamma
detached): an ablation, never a default. It flips the gradient's sign for p < exp(-1/gamma).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import OpsftError

METHODS = ("sft", "dft", "idft", "idft_legacy", "iwsft", "sftq")


@dataclass(frozen=True)
class LossConfig:
    method: str = "sft"
    # IDFT: gamma_t from phi_t = log p_t(y_t) + H(p_t) of the current model (tau = 1)
    beta: float = 1.0
    gamma_min: float = 0.1
    gamma_max: float = 2.0
    warmup_ratio: float = 0.0  # lam = 0 (DFT) before this share of training ...
    transition_ratio: float = 0.0  # ... then rises linearly to 1 over this share
    # iw-SFT: the reference is the frozen initial model
    iw_level: str = "sequence"  # or "token"
    kappa: float = 1.0
    w_max: float = 16.0
    clip_low: float = 0.2
    clip_high: float = 1.8
    # SFT(Q)
    quality_mode: str = "weight"  # or "sample"
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def validate(self) -> None:
        """Raise an OpsftError that says what to change."""
        if self.method not in METHODS:
            raise OpsftError(f"unknown loss '{self.method}': choose one of {', '.join(METHODS)}")
        checks = [
            (self.beta > 0, f"--beta must be > 0 (got {self.beta})"),
            (0 <= self.gamma_min <= self.gamma_max,
             f"need 0 <= --gamma-min <= --gamma-max (got {self.gamma_min} > {self.gamma_max})"
             if self.gamma_min > self.gamma_max else f"--gamma-min must be >= 0 (got {self.gamma_min})"),
            (0 <= self.warmup_ratio <= 1 and 0 <= self.transition_ratio <= 1 - self.warmup_ratio,
             "need 0 <= --warmup-ratio and --warmup-ratio + --transition-ratio <= 1"),
            (self.iw_level in ("sequence", "token"), f"--iw-level must be sequence or token (got {self.iw_level})"),
            (self.w_max > 0, f"--w-max must be > 0 (got {self.w_max})"),
            (0 <= self.clip_low <= self.clip_high,
             f"need 0 <= --clip-low <= --clip-high (got {self.clip_low}, {self.clip_high})"),
            (self.quality_mode in ("weight", "sample"),
             f"--quality-mode must be weight or sample (got {self.quality_mode})"),
        ]
        for ok, message in checks:
            if not ok:
                raise OpsftError(message)

    @property
    def needs_reference(self) -> bool:
        return self.method == "iwsft"

    @property
    def needs_quality(self) -> bool:
        return self.method == "sftq"


@dataclass
class TokenWeights:
    weights: torch.Tensor  # [B, T], zero off the completion; no gradient except for idft_legacy
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, for logging


def idft_lambda(progress: float, warmup_ratio: float = 0.0, transition_ratio: float = 0.0) -> float:
    """lam(s) at training progress s = step / total_steps: 0 before warmup, linear over the transition, then 1."""
    if progress < warmup_ratio:
        return 0.0
    if transition_ratio == 0:
        return 1.0
    return min(1.0, (progress - warmup_ratio) / transition_ratio)


def idft_gamma(phi: torch.Tensor, lam: float, beta: float = 1.0, gamma_min: float = 0.1,
               gamma_max: float = 2.0) -> torch.Tensor:
    """gamma_t = 1 + lam * (clamp(exp(-phi_t / beta), gamma_min, gamma_max) - 1)."""
    return 1 + lam * (torch.exp(-phi / beta).clamp(gamma_min, gamma_max) - 1)


def token_weights(config: LossConfig, log_probs: torch.Tensor, entropy: torch.Tensor | None, mask: torch.Tensor, *,
                  progress: float = 0.0, ref_log_probs: torch.Tensor | None = None,
                  quality: torch.Tensor | None = None) -> TokenWeights:
    """w_t for `config.method` from per-token log p_theta(y_t) and H(p_t) ([B, T]) and the completion mask.

    `ref_log_probs` ([B, T], aligned with log_probs) is needed by iwsft, `quality` ([B]) by sftq;
    `progress` in [0, 1] drives IDFT's lam schedule.
    """
    mask = mask.to(log_probs.dtype)
    log_p = log_probs.detach()
    stats: dict[str, torch.Tensor] = {}
    method = config.method
    if method == "sft" or (method == "sftq" and config.quality_mode == "sample"):
        weights = torch.ones_like(log_p)
    elif method == "dft":
        weights = log_p.exp()
    elif method in ("idft", "idft_legacy"):
        if entropy is None:
            raise ValueError("IDFT needs the entropy of p_t")
        phi = log_p + entropy.detach()
        lam = idft_lambda(progress, config.warmup_ratio, config.transition_ratio)
        gamma = idft_gamma(phi, lam, config.beta, config.gamma_min, config.gamma_max)
        weights = torch.exp(gamma * (log_probs if method == "idft_legacy" else log_p))
        stats.update(phi=phi, gamma=gamma, lam=torch.tensor(lam))
    elif method == "iwsft":
        if ref_log_probs is None:
            raise ValueError("iw-SFT needs reference log-probs")
        log_ratio = (log_p - ref_log_probs) * mask
        if config.iw_level == "sequence":
            mean_ratio = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)
            raw = torch.exp(config.kappa * mean_ratio)
            sequence_weights = raw.clamp(0, config.w_max)
            weights = sequence_weights[:, None].expand_as(log_p)
            has_tokens = mask.sum(-1) > 0
            stats.update(sequence_weight=sequence_weights[has_tokens], clipped=(raw > config.w_max)[has_tokens])
        else:
            raw = torch.exp(log_ratio)
            weights = raw.clamp(config.clip_low, config.clip_high)
            stats.update(clipped=((raw < config.clip_low) | (raw > config.clip_high))[mask.bool()])
    elif method == "sftq":
        if quality is None:
            raise ValueError("SFT(Q) needs per-example quality scores")
        weights = quality.to(log_p.dtype)[:, None].expand_as(log_p)
    else:
        raise OpsftError(f"unknown loss '{method}'")
    return TokenWeights(weights * mask, {k: v.detach() for k, v in stats.items()})


def weighted_nll(log_probs: torch.Tensor, weights: torch.Tensor, num_tokens: torch.Tensor | int) -> torch.Tensor:
    """(1/N) sum_t w_t * (-log p(y_t)); N = completion tokens of the global batch (at least 1)."""
    return (weights * -log_probs).sum() / torch.as_tensor(num_tokens, device=log_probs.device).clamp(min=1)
