"""Hinted Decoding (SPEC §3): two streams of one model write one shared continuation.

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

Each stream keeps its own KV cache and is fed one token per step; all examples and both streams share
one batched forward pass per step, and finished rows leave the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .generation import Decoded, decode_rows, generators_for, prefill, rows_of, sample_token

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


@torch.no_grad()
def hinted_decode(model, hinted_prompts: list[list[int]], plain_prompts: list[list[int]],
                  config: HintedDecodingConfig, *, eos_token_ids: set[int], tokenizer=None,
                  pad_token_id: int = 0, seeds: list[int] | None = None) -> list[Decoded]:
    """Decode one shared continuation per (hinted prompt, plain prompt) pair; see the module doc.

    `tokenizer` is needed only to spot the answer marker in the text written so far. With `seeds` (one
    per example) each example samples from its own generator, so its rewrite does not depend on the
    batch it was decoded in; without, the batch shares one generator seeded with config.seed.
    """
    if len(hinted_prompts) != len(plain_prompts):
        raise ValueError("one plain prompt per hinted prompt")
    if config.answer_marker and tokenizer is None:
        raise ValueError("an answer marker needs the tokenizer to find it in the text")
    n = len(hinted_prompts)
    device = model.get_output_embeddings().weight.device
    generator = generators_for(seeds, device, config.seed) if config.temperature > 0 else None
    log_vocab = math.log(model.get_output_embeddings().weight.shape[0])
    handed_over: set[int] = set()
    lambdas: list[list[float]] = [[] for _ in range(n)]  # lam_t of every token each row chose

    def choose(step, log_p, active):  # rows 0..k-1: hinted streams; k..2k-1: plain streams
        k = len(active)
        log_p_hinted, log_p_plain = log_p[:k], log_p[k:]
        entropy = -(log_p_hinted.exp() * log_p_hinted).sum(-1)
        lam = mixing_lambda(entropy / log_vocab, config)
        lam = torch.where(torch.tensor([i in handed_over for i in active], device=lam.device), 1.0, lam)
        if step == 0 and config.hinted_first_token:
            lam = torch.zeros_like(lam)
        for i, value in zip(active, lam.tolist()):
            lambdas[i].append(value)
        return sample_token(mixture_logprobs(log_p_hinted, log_p_plain, lam), config.temperature, config.top_p,
                            rows_of(generator, active))

    def after_token(step, i, result):
        if (config.answer_marker and i not in handed_over
                and config.answer_marker in tokenizer.decode(result.tokens[-16:])):
            handed_over.add(i)
            result.handover_step = step

    results = decode_rows(model, _prefill(model, hinted_prompts, plain_prompts, pad_token_id, device), n, 2,
                          choose, max_new_tokens=config.max_new_tokens, eos_token_ids=eos_token_ids,
                          repeat_window=config.repeat_window, repeat_count=config.repeat_count,
                          after_token=after_token)
    for result, row_lambdas in zip(results, lambdas):
        result.lambdas = row_lambdas
    return results


def _prefill(model, hinted_prompts, plain_prompts, pad_token_id, device):
    """KV caches, last logits, attention mask and next positions of all 2n rows (hinted first).

    The hinted prompts (question + reference + instruction) are much longer than the plain ones, so each
    stream is prefilled at its own width; the shorter cache is then left-padded with masked zeros and the
    two are joined into one batch. Caches of another layout (sliding-window, hybrid) are prefilled jointly.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    hinted = prefill(model, hinted_prompts, pad_token_id, device)
    if not (type(hinted[0]) is DynamicCache and all(type(layer) is DynamicLayer for layer in hinted[0].layers)):
        return prefill(model, hinted_prompts + plain_prompts, pad_token_id, device)
    plain = prefill(model, plain_prompts, pad_token_id, device)
    width = max(hinted[2].shape[1], plain[2].shape[1])

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:  # left-pad dimension `dim` to `width`
        missing = width - t.shape[dim]
        if missing == 0:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    cache = DynamicCache()
    for index, (h_layer, p_layer) in enumerate(zip(hinted[0].layers, plain[0].layers)):
        cache.update(torch.cat([pad(h_layer.keys, 2), pad(p_layer.keys, 2)]),
                     torch.cat([pad(h_layer.values, 2), pad(p_layer.values, 2)]), index)
    return (cache, torch.cat([hinted[1], plain[1]]), torch.cat([pad(hinted[2], 1), pad(plain[2], 1)]),
            torch.cat([hinted[3], plain[3]]))
