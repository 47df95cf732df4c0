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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LAMBDA_MODES = ("linear", "sigmoid", "piecewise")


@dataclass
class HintedDecodingConfig:
    lambda_mode: str = "linear"
    beta: float = 3.0  # slope (linear) or steepness (sigmoid)
    center: float = 0.5  # sigmoid centre, in units of log V
    h1: float = 0.2  # piecewise: lam = 0 below
    h2: float = 0.6  # piecewise: lam = 1 above
    temperature: float = 0.3  # 0 = greedy
    top_p: float = 0.95
    max_new_tokens: int = 512
    answer_marker: str | None = "\\boxed{"
    hinted_first_token: bool = True
    repeat_window: int = 30  # k
    repeat_count: int = 5  # m
    seed: int = 0


@dataclass
class Decoded:
    tokens: list[int]
    finish_reason: str  # "eos", "length" or "repetition"
    handover_step: int | None  # step after which the plain stream wrote alone (answer marker seen)
    lambdas: list[float] = field(default_factory=list)  # lam_t per generated token

    @property
    def mean_lambda(self) -> float:
        return sum(self.lambdas) / len(self.lambdas) if self.lambdas else float("nan")


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


def sample_token(log_m: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """Greedy when temperature == 0; else keep the top-p nucleus of m, then sample from it at temperature.

    `generator` is one torch.Generator for the batch, or a list with one per row (each row's draws then
    do not depend on the other rows of the batch).
    """
    if temperature == 0:
        return log_m.argmax(-1)
    sorted_log_m, order = log_m.sort(dim=-1, descending=True)
    mass_before = sorted_log_m.exp().cumsum(-1) - sorted_log_m.exp()
    keep_sorted = mass_before < top_p  # the most likely token is always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    probs = F.softmax(log_m.masked_fill(~keep, -math.inf) / temperature, dim=-1).float()
    if isinstance(generator, list):
        return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class RepetitionDetector:
    """True once the last k tokens, as a window, have occurred m times in the sequence (overlaps count)."""

    def __init__(self, window: int, count: int):
        self.window, self.count = window, count
        self.tokens: list[int] = []
        self.seen: dict[tuple[int, ...], int] = {}

    def push(self, token: int) -> bool:
        self.tokens.append(token)
        if self.window <= 0 or len(self.tokens) < self.window:
            return False
        key = tuple(self.tokens[-self.window:])
        self.seen[key] = self.seen.get(key, 0) + 1
        return self.seen[key] >= self.count


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
    generator = None
    if config.temperature > 0:
        generator = (torch.Generator(device=device).manual_seed(config.seed) if seeds is None else
                     [torch.Generator(device=device).manual_seed(seed) for seed in seeds])
    log_vocab = math.log(model.get_output_embeddings().weight.shape[0])

    # rows 0..n-1: hinted streams; rows n..2n-1: plain streams; left-padded so the last column is "now"
    cache, logits, attention_mask, next_position = _prefill(model, hinted_prompts, plain_prompts, pad_token_id,
                                                            device)

    results = [Decoded([], "length", None) for _ in range(n)]
    repetition = [RepetitionDetector(config.repeat_window, config.repeat_count) for _ in range(n)]
    active = list(range(n))  # example index of each remaining row pair, in batch order
    for step in range(config.max_new_tokens):
        log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        k = len(active)
        log_p_hinted, log_p_plain = log_p[:k], log_p[k:]
        entropy = -(log_p_hinted.exp() * log_p_hinted).sum(-1)
        lam = mixing_lambda(entropy / log_vocab, config)
        handed_over = torch.tensor([results[i].handover_step is not None for i in active], device=lam.device)
        lam = torch.where(handed_over, torch.ones_like(lam), lam)
        if step == 0 and config.hinted_first_token:
            lam = torch.zeros_like(lam)
        row_generators = [generator[i] for i in active] if isinstance(generator, list) else generator
        tokens = sample_token(mixture_logprobs(log_p_hinted, log_p_plain, lam), config.temperature,
                              config.top_p, row_generators)

        still = []
        for j, i in enumerate(active):
            token, result = int(tokens[j]), results[i]
            result.tokens.append(token)
            result.lambdas.append(float(lam[j]))
            if token in eos_token_ids:
                result.finish_reason = "eos"
            elif repetition[i].push(token):
                result.finish_reason = "repetition"
            else:
                if (config.answer_marker and result.handover_step is None
                        and config.answer_marker in tokenizer.decode(result.tokens[-16:])):
                    result.handover_step = step
                still.append(j)
        if not still or step == config.max_new_tokens - 1:
            break
        if len(still) < k:  # finished rows leave the batch, in both streams
            keep = torch.tensor(still + [k + j for j in still], device=device)
            cache.batch_select_indices(keep)
            tokens, attention_mask, next_position = tokens[still], attention_mask[keep], next_position[keep]
            active = [active[j] for j in still]
        feed = torch.cat([tokens, tokens])[:, None]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(feed), 1)], dim=1)
        out = model(input_ids=feed, attention_mask=attention_mask, position_ids=next_position[:, None],
                    past_key_values=cache, use_cache=True)
        cache, logits, next_position = out.past_key_values, out.logits[:, -1], next_position + 1
    return results


def _left_padded(prompts: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.as_tensor(prompt)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids.to(device), attention_mask.to(device)


def _forward_prompts(model, prompts, pad_token_id, device):
    input_ids, attention_mask = _left_padded(prompts, pad_token_id, device)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    return out.past_key_values, out.logits[:, -1], attention_mask, positions[:, -1] + 1


def _prefill(model, hinted_prompts, plain_prompts, pad_token_id, device):
    """KV caches, last logits, attention mask and next positions of all 2n rows (hinted first).

    The hinted prompts (question + reference + instruction) are much longer than the plain ones, so each
    stream is prefilled at its own width; the shorter cache is then left-padded with masked zeros and the
    two are joined into one batch. Caches of another layout (sliding-window, hybrid) are prefilled jointly.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    hinted = _forward_prompts(model, hinted_prompts, pad_token_id, device)
    if not (type(hinted[0]) is DynamicCache and all(type(layer) is DynamicLayer for layer in hinted[0].layers)):
        return _forward_prompts(model, hinted_prompts + plain_prompts, pad_token_id, device)
    plain = _forward_prompts(model, plain_prompts, pad_token_id, device)
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
