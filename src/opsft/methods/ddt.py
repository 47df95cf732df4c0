"""DDT, Distribution Discriminant Theory (docs/methods.md): how far a token lies from the model's own distribution.

    phi_t = log p_t(y_t) + H(p_t),    p_t = softmax(z_t / tau),    H(p) = -sum_v p(v) log p(v)   (nats)

If y_t were drawn from p_t itself, E[log p_t(y_t)] = -H(p_t), so E[phi_t] = 0 in every context:
phi is the log-likelihood centred by its own expectation under the model. Data written by someone
else scores E[phi_t] = H(p) - H(q) - KL(q || p), usually negative.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

# Vocabulary columns per projection tile. TRL's kernel tiles 4096 tokens x this many columns, so the
# extra memory is bounded by it whatever the batch, length or vocabulary (docs/benchmarks.md: 1/16 of
# the naive peak at vocabulary 152k, and no slower).
VOCAB_TILE = 8192


def logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y) and H(p) for each row of `hidden` [N, d], p = softmax(transform(hidden @ weight.T + bias) / tau).

    transform(z) = softcap * tanh(z * logit_scale / softcap) (or z * logit_scale without softcap), as the
    model's own forward applies it. Computed through TRL's chunked LM-head kernel, so the [N, V] logits
    are never built. Precision: the kernel multiplies in the hidden states' dtype (fp32; fp64 for an fp64
    model) but keeps its softmax sums in fp32, whatever the model's dtype: the results agree with an exact
    float64 computation to about 1e-6 nats, not to float64 precision (tests/test_ddt.py).
    """
    from trl.kernels import ChunkedLogProbFunction  # here, not at import: token_phi serves policies too (control)

    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_probs, entropy, *_ = ChunkedLogProbFunction.apply(
        hidden if hidden.dtype == torch.float64 else hidden.float(), weight, bias, targets, temperature, VOCAB_TILE,
        softcap, logit_scale, ("entropy",)
    )
    return log_probs, entropy


def token_phi(log_probs, entropy):
    """phi_t = log p_t(y_t) + H(p_t), per token (nats); tensors or arrays. For a continuous policy, per step
    with densities: log pi(a_t|s_t) + H(pi(.|s_t)) (opsft.control.policy)."""
    return log_probs + entropy


def phi_statistics(phi: np.ndarray) -> dict[str, float | int]:
    """Per-example summaries over its completion tokens: phi_mean (the main number), phi_std,
    phi_pos_ratio (share of tokens with phi_t > 0), phi_sum and n_tokens."""
    phi = np.asarray(phi, dtype=np.float64)
    n = int(phi.size)
    return {
        "phi_mean": float(phi.mean()) if n else float("nan"),
        "phi_std": float(phi.std()) if n else float("nan"),
        "phi_pos_ratio": float((phi > 0).mean()) if n else float("nan"),
        "phi_sum": float(phi.sum()),
        "n_tokens": n,
    }


def phi_summary(scored: list[dict], *, in_threshold: float = -0.05, out_threshold: float = -0.1) -> dict[str, Any]:
    """Dataset-level statistics of per-example phi_mean, and of per-token phi pooled over all tokens."""
    means = np.array([s["phi_mean"] for s in scored], dtype=np.float64)
    n_tok = np.array([s["n_tokens"] for s in scored], dtype=np.float64)
    sums = np.array([s["phi_sum"] for s in scored], dtype=np.float64)
    sq_sums = n_tok * (np.array([s["phi_std"] for s in scored]) ** 2 + means ** 2)  # sum of phi_t^2
    total = n_tok.sum()
    token_mean = sums.sum() / total if total else math.nan
    q = np.quantile(means, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(means) else [math.nan] * 5
    return {
        "n_examples": len(scored),
        "n_tokens": int(total),
        "n_truncated": int(sum(bool(s["truncated"]) for s in scored)),
        "phi_mean": {
            "mean": float(means.mean()) if len(means) else math.nan,
            "std": float(means.std(ddof=1)) if len(means) > 1 else math.nan,
            "sem": float(means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.nan,
            "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]),
            "min": float(means.min()) if len(means) else math.nan,
            "max": float(means.max()) if len(means) else math.nan,
        },
        "token_phi": {
            "mean": float(token_mean),
            "std": float(math.sqrt(max(sq_sums.sum() / total - token_mean ** 2, 0.0))) if total else math.nan,
        },
        "in_distribution": {"threshold": in_threshold, "share": float((means >= in_threshold).mean())},
        "out_of_distribution": {"threshold": out_threshold, "share": float((means < out_threshold).mean())},
    }


IN_DISTRIBUTION = -0.05  # phi_mean at or above: in-distribution (the authors' rule of thumb, tau = 1)


def phi_metrics(log_probs: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(sum of phi_t, number of tokens, examples with phi_mean >= -0.05, examples) over the masked positions of a
    [B, T] batch: sums, so that processes and micro-batches pool them exactly."""
    phi = (log_probs.detach().float() + entropy.detach().float()) * mask
    tokens = mask.sum(1)
    has_tokens = tokens > 0
    on_policy = has_tokens & (phi.sum(1) / tokens.clamp(min=1) >= IN_DISTRIBUTION)
    return phi.sum(), tokens.sum(), on_policy.sum(), has_tokens.sum()
