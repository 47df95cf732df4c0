"""The slow, obvious Hinted Decoding: one example, no cache, the whole prefix recomputed at every step,
the two streams in two separate forward passes, float64 maths. Used by the tests and the benchmark."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from opsft.methods.hinted import HintedDecodingConfig

EOS = 2


def reference_lambda(h: float, c: HintedDecodingConfig) -> float:
    if c.lambda_mode == "linear":
        return min(max(c.beta * h, 0.0), 1.0)
    if c.lambda_mode == "sigmoid":
        return 1 / (1 + math.exp(-c.beta * (h - c.center)))
    if h <= c.h1:
        return 0.0
    if h >= c.h2:
        return 1.0
    return (h - c.h1) / (c.h2 - c.h1)


def greedy(step: int, log_mix: torch.Tensor) -> int:
    return int(log_mix.argmax())


def reference_decode(model, hinted, plain, c: HintedDecodingConfig, tokenizer, eos=frozenset({EOS}), choose=greedy):
    """(tokens, finish reason, handover step, lambdas). `choose(step, log_mix)` picks each token from the mixed
    log-probabilities: greedy by default; a test can make it follow another decoder's tokens (teacher forcing)."""
    out, lams, handover, reason, windows = [], [], None, "length", {}
    log_vocab = math.log(model.config.vocab_size)
    for step in range(c.max_new_tokens):
        with torch.no_grad():
            log_h = F.log_softmax(model(torch.tensor([hinted + out], device=model.device)).logits[0, -1].double(), -1)
            log_q = F.log_softmax(model(torch.tensor([plain + out], device=model.device)).logits[0, -1].double(), -1)
        lam = reference_lambda((-(log_h.exp() * log_h).sum() / log_vocab).item(), c)
        if handover is not None:
            lam = 1.0
        if step == 0 and c.hinted_first_token:
            lam = 0.0
        token = choose(step, F.log_softmax((1 - lam) * log_h + lam * log_q, -1))
        out.append(token)
        lams.append(lam)
        if token in eos:
            reason = "eos"
            break
        if len(out) >= c.repeat_window:
            key = tuple(out[-c.repeat_window:])
            windows[key] = windows.get(key, 0) + 1
            if windows[key] >= c.repeat_count:
                reason = "repetition"
                break
        if c.answer_marker and handover is None and c.answer_marker in tokenizer.decode(out[-16:]):
            handover = step
    return out, reason, handover, lams
