"""Hinted Decoding (docs/methods.md): two streams of one model write one shared continuation.

The hinted stream h sees the question and a reference solution; the plain stream q sees the question
alone, as at training and test time. At every step, with H_t the hinted stream's entropy and V the
vocabulary size:

    lam_t   = f(H_t / log V)                          how free the hinted stream is at this step
    log m_t = (1 - lam_t) log p_h + lam_t log p_q     geometric mixture, renormalised
    y_t     ~ m_t  (greedy, or top-p then temperature), appended to both streams

f: linear clamp(beta * h, 0, 1) (default, beta = 3); sigmoid(beta * (h - center)); piecewise 0 below h1,
1 above h2, linear between. The first token comes from the hinted stream; once the answer marker has
been written, the plain stream alone writes the rest (lam = 1). A row stops at EOS, at the length cap,
or when a k-token window has occurred m times.

This module holds the rule (the config, lam = f(h), the mixture); the decoder that runs both streams is
engine/hinted_decoding.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LAMBDA_MODES = ("linear", "sigmoid", "piecewise")


@dataclass
class HintedDecodingConfig:
    lambda_mode: str = "linear"
    beta: float = 3.0  # slope (linear) or steepness (sigmoid)
    center: float = 0.5  # sigmoid centre, in units of log V
    h1: float = 0.3  # piecewise: lam = 0 below (the authors: 0.3)
    h2: float = 0.7  # piecewise: lam = 1 above (the authors: 0.7)
    temperature: float = 1.0  # 0 = greedy; 1 samples the mixture itself (on-policy: phi ~ 0 at tau = 1)
    top_p: float = 1.0  # the authors: top-p 0.95 then temperature 0.3 (scores positive at tau = 1)
    max_new_tokens: int = 512
    answer_marker: str | None = "\\boxed{"
    hinted_first_token: bool = True
    repeat_window: int = 30  # k
    repeat_count: int = 5  # m
    seed: int = 0


def mixing_lambda(h: torch.Tensor, config: HintedDecodingConfig) -> torch.Tensor:
    """lam = f(h), h = H_hinted / log V in [0, 1]."""
    if config.lambda_mode == "linear":
        return (config.beta * h).clamp(0, 1)
    if config.lambda_mode == "sigmoid":
        return torch.sigmoid(config.beta * (h - config.center))
    if config.lambda_mode == "piecewise":
        if config.h2 <= config.h1:
            return (h > config.h2).to(h.dtype)
        return ((h - config.h1) / (config.h2 - config.h1)).clamp(0, 1)
    raise ValueError(f"unknown lambda mode {config.lambda_mode!r}: choose one of {', '.join(LAMBDA_MODES)}")


def mixture_logprobs(log_p_hinted: torch.Tensor, log_p_plain: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """log m = log_softmax((1 - lam) log p_h + lam log p_q), row-wise; lam has shape [B]."""
    lam = lam[:, None].to(log_p_hinted.dtype)
    return F.log_softmax((1 - lam) * log_p_hinted + lam * log_p_plain, dim=-1)
