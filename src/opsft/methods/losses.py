"""The per-token weighted SFT loss family (docs/methods.md: every formula, its defaults, and where opsft differs
from the authors' code).

    L = (1/N) sum_t [w_t * (-log p_theta(y_t)) + a_t]      over the completion tokens of the (global) batch

a_t, an anchor term, is 0 except for ASFT.

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
| eaft         | sg((H(p_t) / ln V) ** alpha), V the vocabulary size (Entropy-Adaptive FT, arXiv 2601.02151) |
| asft         | sg(p_t(y_t)) as DFT, plus a_t = mu * KL(p_ref,t || p_theta,t) over the whole vocabulary  |
| asft_token   | sg(p_t(y_t)) as DFT, plus a_t = mu * sg(p_t(y_t)) * k3_t, k3_t = exp(r_t) - r_t - 1,      |
|              |   r_t = clamp(log p_ref(y_t) - log p_theta(y_t), -10, 10)                        |

ASFT (Anchored SFT, arXiv 2509.23753) ties DFT to the initial model p_ref with a KL anchor. `asft` is the
published one, as the authors' script and LLaMA-Factory's `asft_loss_func` compute it: KL(p_ref || p_theta) over
the whole vocabulary at every completion position, whose gradient on every logit is mu * (p_theta(v) -
p_ref(v)) / N. It needs the reference model at train time; methods/vocab_kl.py computes it from the two models'
hidden states, tile by tile, never as a [B, T, V] tensor. `asft_token` is a cheaper, different method: the k3
estimate at the data token only (SkyRL's, from the same per-token reference log-probs as iw-SFT, which can be
precomputed), weighted by sg(p_t(y_t)) as DFT weights its NLL. Its gradient is mu * (p - p_ref) * (1 - p) / N on
the data token's logit and mu * (p_ref - p) * p_v / N on each other logit v: it is not an approximation of the
full KL's. With mu = 0 both are DFT exactly.

`idft_legacy` is the authors' pre-2026-03-13 IDFT, with p ** gamma left inside the gradient (only gamma
detached): an ablation, never a default. It flips the gradient's sign for p < exp(-1/gamma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..runtime.options import Options, option

METHODS = ("sft", "dft", "idft", "idft_legacy", "iwsft", "sftq", "eaft", "asft", "asft_token")
K3_CLAMP = 10.0  # asft_token: |r_t| is clamped to this before exp (SkyRL), so the anchor cannot overflow


@dataclass
class LossConfig(Options):
    """The loss and its options (SPEC §2 defaults); the field names are the command-line flags."""

    loss: str = option("sft", "loss: " + ", ".join(METHODS), choices=list(METHODS))
    idft_beta: float = option(1.0, "IDFT beta: gamma from exp(-phi / beta)", above=0)
    idft_gamma_min: float = option(0.1, "IDFT lower clamp of exp(-phi / beta)", at_least=0)
    idft_gamma_max: float = option(2.0, "IDFT upper clamp of exp(-phi / beta)", at_least=0)
    idft_warmup_ratio: float = option(0.0, "IDFT: share of training with lam = 0 (DFT)", at_least=0, at_most=1)
    idft_transition_ratio: float = option(0.0, "IDFT: share of training over which lam rises to 1", at_least=0,
                                          at_most=1)
    iw_level: str = option("sequence", "iw-SFT weight per sequence or per token", choices=["sequence", "token"])
    iw_kappa: float = option(1.0, "iw-SFT (sequence): exp(kappa * mean log ratio)", at_least=0)
    iw_w_max: float = option(16.0, "iw-SFT (sequence): largest weight", above=0)
    iw_clip_low: float = option(0.2, "iw-SFT (token): lower clip of the ratio", at_least=0)
    iw_clip_high: float = option(1.8, "iw-SFT (token): upper clip of the ratio", above=0)
    quality_mode: str = option("weight", "SFT(Q): weight tokens by quality, or sample examples in proportion "
                                         "to it", choices=["weight", "sample"])
    eaft_alpha: float = option(1.0, "EAFT: w = (H / ln V) ** alpha", at_least=0)
    asft_anchor: float = option(0.1, "ASFT and asft_token: weight mu of the KL anchor to the initial model (0: DFT)",
                                at_least=0)

    def rules(self):
        return [
            (self.idft_gamma_min <= self.idft_gamma_max,
             f"need --idft-gamma-min <= --idft-gamma-max (got {self.idft_gamma_min} > {self.idft_gamma_max})"),
            (self.idft_warmup_ratio + self.idft_transition_ratio <= 1,
             "need --idft-warmup-ratio + --idft-transition-ratio <= 1 (shares of training)"),
            (self.iw_clip_low <= self.iw_clip_high,
             f"need --iw-clip-low <= --iw-clip-high (got {self.iw_clip_low}, {self.iw_clip_high})"),
        ]

    @property
    def needs_reference_log_probs(self) -> bool:
        """log p_ref(y_t) at each data token (precomputed, a data column, or from a reference model)."""
        return self.loss == "iwsft" or (self.loss == "asft_token" and self.asft_anchor > 0)

    @property
    def needs_reference_model(self) -> bool:
        """The reference's whole next-token distribution at each position: a reference model at train time."""
        return self.loss == "asft" and self.asft_anchor > 0

    @property
    def needs_quality(self) -> bool:
        return self.loss == "sftq"


@dataclass
class TokenWeights:
    weights: torch.Tensor  # [B, T], zero off the completion; no gradient except for idft_legacy
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, for logging
    anchor: torch.Tensor | None = None  # [B, T] a_t, with its gradient, zero off the completion (ASFT)


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


def sequence_importance_weights(log_ratio: torch.Tensor, mask: torch.Tensor, *, kappa: float = 1.0,
                                w_max: float = 16.0, self_normalise: bool = False
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """iw-SFT's weight per sequence, and the weight before clipping ([B] each).

        w_b = clamp(exp(kappa * sum_t r_bt / T_b), 0, w_max),    r_bt = log q(y_bt) - log p_ref(y_bt)

    over the T_b masked positions of sequence b (r is 0 elsewhere); q is the proposal: the model being trained
    (LLMs) or an average of it (control: an EMA). kappa is the temperature (control: 10). With `self_normalise`,
    w_b * B' / sum_b' w_b' over the B' sequences that have positions, so that the weights average 1 in the batch
    (0 for empty sequences). No gradient flows through the weights."""
    mask = mask.to(log_ratio.dtype)
    lengths = mask.sum(-1)
    raw = torch.exp(kappa * (log_ratio.detach() * mask).sum(-1) / lengths.clamp(min=1))
    weights = raw.clamp(0, w_max)
    if self_normalise:
        has_positions = lengths > 0
        weights = torch.where(has_positions, weights, 0.0)
        weights = weights * has_positions.sum() / weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)
    return weights, raw


def token_importance_weights(log_ratio: torch.Tensor, *, low: float, high: float, kappa: float = 1.0
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """iw-SFT's weight per token, and the weight before clipping: w_t = clamp(exp(kappa * r_t), low, high),
    r_t = log q(y_t) - log p_ref(y_t). No gradient flows through the weights."""
    raw = torch.exp(kappa * log_ratio.detach())
    return raw.clamp(low, high), raw


def token_weights(config: LossConfig, log_probs: torch.Tensor, entropy: torch.Tensor | None, mask: torch.Tensor, *,
                  progress: float = 0.0, ref_log_probs: torch.Tensor | None = None,
                  quality: torch.Tensor | None = None, vocab_size: int | None = None,
                  reference_kl: torch.Tensor | None = None) -> TokenWeights:
    """w_t (and a_t) for `config.loss` from per-token log p_theta(y_t) and H(p_t) ([B, T]) and the completion mask.

    `ref_log_probs` ([B, T], aligned with log_probs) is needed by iwsft and asft_token, `reference_kl` ([B, T]:
    KL(p_ref,t || p_theta,t), differentiable, methods/vocab_kl.py) by asft, `quality` ([B]) by sftq, `vocab_size` by
    eaft; `progress` in [0, 1] drives IDFT's lam schedule.
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
            sequence_weights, raw = sequence_importance_weights(log_ratio, mask, kappa=config.iw_kappa,
                                                                w_max=config.iw_w_max)
            weights = sequence_weights[:, None].expand_as(log_p)
            has_tokens = mask.sum(-1) > 0
            stats.update(sequence_weight=sequence_weights[has_tokens], clipped=(raw > config.iw_w_max)[has_tokens])
        else:
            weights, raw = token_importance_weights(log_ratio, low=config.iw_clip_low, high=config.iw_clip_high)
            stats.update(clipped=((raw < config.iw_clip_low) | (raw > config.iw_clip_high))[mask.bool()])
    elif method == "sftq":
        if quality is None:
            raise ValueError("SFT(Q) needs per-example quality scores")
        weights = quality.to(log_p.dtype)[:, None].expand_as(log_p)
    elif method == "eaft":
        if entropy is None or vocab_size is None:
            raise ValueError("EAFT needs the entropy of p_t and the vocabulary size")
        weights = (entropy.detach().clamp(min=0) / math.log(vocab_size)) ** config.eaft_alpha
    elif method == "asft":
        weights = log_p.exp()
        if config.asft_anchor > 0:
            if reference_kl is None:
                raise ValueError("ASFT needs KL(p_ref || p_theta) at each position (a reference model)")
            kl = reference_kl * mask
            stats.update(kl=kl[mask.bool()])
            return TokenWeights(weights * mask, {k: v.detach() for k, v in stats.items()}, config.asft_anchor * kl)
    elif method == "asft_token":
        weights = log_p.exp()
        if config.asft_anchor > 0:
            if ref_log_probs is None:
                raise ValueError("asft_token needs reference log-probs")
            r = torch.where(mask.bool(), ref_log_probs - log_probs, 0.0).clamp(-K3_CLAMP, K3_CLAMP)
            k3 = torch.exp(r) - r - 1
            stats.update(k3=k3[mask.bool()])
            anchor = config.asft_anchor * weights * k3
            return TokenWeights(weights * mask, {k: v.detach() for k, v in stats.items()}, anchor)
    else:
        raise ValueError(f"unknown loss '{method}'")  # LossConfig allows only METHODS
    return TokenWeights(weights * mask, {k: v.detach() for k, v in stats.items()})


def weighted_nll(log_probs: torch.Tensor, weights: torch.Tensor, num_tokens: torch.Tensor | int) -> torch.Tensor:
    """(1/N) sum_t w_t * (-log p(y_t)); N = completion tokens of the global batch (at least 1)."""
    return (weights * -log_probs).sum() / torch.as_tensor(num_tokens, device=log_probs.device).clamp(min=1)


def family_loss(log_probs: torch.Tensor, terms: TokenWeights, num_tokens: torch.Tensor | int) -> torch.Tensor:
    """L = (1/N) sum_t [w_t * (-log p(y_t)) + a_t]: weighted_nll, plus the anchor where the method has one."""
    loss = weighted_nll(log_probs, terms.weights, num_tokens)
    if terms.anchor is None:
        return loss
    return loss + terms.anchor.sum() / torch.as_tensor(num_tokens, device=log_probs.device).clamp(min=1)
