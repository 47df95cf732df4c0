"""DDT, Distribution Discriminant Theory (SPEC §1): how far a token lies from the model's own distribution.

    phi_t = log p_t(y_t) + H(p_t),    p_t = softmax(z_t / tau),    H(p) = -sum_v p(v) log p(v)   (nats)

If y_t were drawn from p_t itself, E[log p_t(y_t)] = -H(p_t), so E[phi_t] = 0 in every context:
phi is the log-likelihood centred by its own expectation under the model. Data written by someone
else scores E[phi_t] = H(p) - H(q) - KL(q || p), usually negative.
"""

from __future__ import annotations

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
