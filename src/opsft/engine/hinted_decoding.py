"""Hinted Decoding's decoder (SPEC §3; the rule is methods/hinted.py): two streams of one model write one shared
continuation, y_t ~ m_t = normalised p_h^(1 - lam_t) p_q^lam_t, appended to both streams.

Each stream keeps its own KV cache and is fed one token per step; all examples and both streams share
one batched forward pass per step, and finished rows leave the batch.
"""

from __future__ import annotations

import math

import torch

from ..methods.hinted import HintedDecodingConfig, mixing_lambda, mixture_logprobs
from .generation import Decoded, decode_rows, generators_for, prefill, rows_of, sample_token


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
