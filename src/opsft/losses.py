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


def _option(default, help_text, **extra):
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass
class LossConfig:
    """The loss and its options (SPEC §2 defaults); the field names are the command-line flags."""

    loss: str = _option("sft", "loss: " + ", ".join(METHODS), choices=list(METHODS))
    idft_beta: float = _option(1.0, "IDFT beta: gamma from exp(-phi / beta)")
    idft_gamma_min: float = _option(0.1, "IDFT lower clamp of exp(-phi / beta)")
    idft_gamma_max: float = _option(2.0, "IDFT upper clamp of exp(-phi / beta)")
    idft_warmup_ratio: float = _option(0.0, "IDFT: share of training with lam = 0 (DFT)")
    idft_transition_ratio: float = _option(0.0, "IDFT: share of training over which lam rises to 1")
    iw_level: str = _option("sequence", "iw-SFT weight per sequence or per token", choices=["sequence", "token"])
    iw_kappa: float = _option(1.0, "iw-SFT (sequence): exp(kappa * mean log ratio)")
    iw_w_max: float = _option(16.0, "iw-SFT (sequence): largest weight")
    iw_clip_low: float = _option(0.2, "iw-SFT (token): lower clip of the ratio")
    iw_clip_high: float = _option(1.8, "iw-SFT (token): upper clip of the ratio")
    quality_mode: str = _option("weight", "SFT(Q): weight tokens by quality, or sample examples in proportion "
                                          "to it", choices=["weight", "sample"])

    def validate(self) -> None:
        """Raise an OpsftError that says what to change."""
        if self.loss not in METHODS:
            raise OpsftError(f"unknown loss '{self.loss}': choose one of {', '.join(METHODS)}")
        checks = [
            (self.idft_beta > 0, f"--idft-beta must be > 0 (got {self.idft_beta})"),
            (self.idft_gamma_min <= self.idft_gamma_max,
             f"need --idft-gamma-min <= --idft-gamma-max (got {self.idft_gamma_min} > {self.idft_gamma_max})"),
            (self.idft_gamma_min >= 0, f"--idft-gamma-min must be >= 0 (got {self.idft_gamma_min})"),
            (0 <= self.idft_warmup_ratio and 0 <= self.idft_transition_ratio
             and self.idft_warmup_ratio + self.idft_transition_ratio <= 1,
             "need --idft-warmup-ratio, --idft-transition-ratio >= 0 with a sum <= 1"),
            (self.iw_level in ("sequence", "token"), f"--iw-level must be sequence or token (got {self.iw_level})"),
            (self.iw_w_max > 0, f"--iw-w-max must be > 0 (got {self.iw_w_max})"),
            (0 <= self.iw_clip_low <= self.iw_clip_high,
             f"need 0 <= --iw-clip-low <= --iw-clip-high (got {self.iw_clip_low}, {self.iw_clip_high})"),
            (self.quality_mode in ("weight", "sample"),
             f"--quality-mode must be weight or sample (got {self.quality_mode})"),
        ]
        for ok, message in checks:
            if not ok:
                raise OpsftError(message)

    @property
    def needs_reference(self) -> bool:
        return self.loss == "iwsft"

    @property
    def needs_quality(self) -> bool:
        return self.loss == "sftq"


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
    """w_t for `config.loss` from per-token log p_theta(y_t) and H(p_t) ([B, T]) and the completion mask.

    `ref_log_probs` ([B, T], aligned with log_probs) is needed by iwsft, `quality` ([B]) by sftq;
    `progress` in [0, 1] drives IDFT's lam schedule.
    """
    mask = mask.to(log_probs.dtype)
    log_p = log_probs.detach()
    stats: dict[str, torch.Tensor] = {}
    method = config.loss
    if method == "sft" or (method == "sftq" and config.quality_mode == "sample"):
        weights = torch.ones_like(log_p)
    elif method == "dft":
        weights = log_p.exp()
    elif method in ("idft", "idft_legacy"):
        if entropy is None:
            raise ValueError("IDFT needs the entropy of p_t")
        phi = log_p + entropy.detach()
        lam = idft_lambda(progress, config.idft_warmup_ratio, config.idft_transition_ratio)
        gamma = idft_gamma(phi, lam, config.idft_beta, config.idft_gamma_min, config.idft_gamma_max)
        weights = torch.exp(gamma * (log_probs if method == "idft_legacy" else log_p))
        stats.update(phi=phi, gamma=gamma, lam=torch.tensor(lam))
    elif method == "iwsft":
        if ref_log_probs is None:
            raise ValueError("iw-SFT needs reference log-probs")
        log_ratio = (log_p - ref_log_probs) * mask
        if config.iw_level == "sequence":
            mean_ratio = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)
            raw = torch.exp(config.iw_kappa * mean_ratio)
            sequence_weights = raw.clamp(0, config.iw_w_max)
            weights = sequence_weights[:, None].expand_as(log_p)
            has_tokens = mask.sum(-1) > 0
            stats.update(sequence_weight=sequence_weights[has_tokens], clipped=(raw > config.iw_w_max)[has_tokens])
        else:
            raw = torch.exp(log_ratio)
            weights = raw.clamp(config.iw_clip_low, config.iw_clip_high)
            stats.update(clipped=((raw < config.iw_clip_low) | (raw > config.iw_clip_high))[mask.bool()])
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
