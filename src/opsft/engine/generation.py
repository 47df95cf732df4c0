"""Batched, KV-cached decoding with one random generator per row.

`decode_rows` is the loop that Hinted Decoding (engine/hinted_decoding.py) and plain sampling (`sample`, used by eval,
prefs and the drift measure) share: every row of the batch keeps its KV cache and is fed one token per
step, finished rows leave the batch, and a row stops at EOS, at the length cap, or when a k-token window
has occurred m times. A batch can hold several *streams* per row (Hinted Decoding: hinted and plain),
which all receive the token chosen for their row.

Each row draws from its own torch.Generator, so a row's output does not depend on which other rows
shared its batch (only on floating-point round-off of the padded batch): a resumed job regenerates
exactly what an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    repeat_window: int = 0  # k; 0 = no repetition stop
    repeat_count: int = 5  # m


@dataclass
class Decoded:
    tokens: list[int]
    finish_reason: str  # "eos", "length" or "repetition"
    handover_step: int | None = None  # Hinted Decoding: step after which the plain stream wrote alone
    lambdas: list[float] = field(default_factory=list)  # Hinted Decoding: lam_t per generated token

    @property
    def mean_lambda(self) -> float:
        return sum(self.lambdas) / len(self.lambdas) if self.lambdas else float("nan")


def row_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (run seed, example index, sample number, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def sample_token(log_m: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """Greedy when temperature == 0; else keep the top-p nucleus of m, then sample from it at temperature.

    `generator` is one torch.Generator for the batch, or a list with one per row (each row's draws then
    do not depend on the other rows of the batch).
    """
    if temperature == 0:
        return log_m.argmax(-1)
    if top_p < 1:
        sorted_log_m, order = log_m.sort(dim=-1, descending=True)
        mass_before = sorted_log_m.exp().cumsum(-1) - sorted_log_m.exp()
        keep_sorted = mass_before < top_p  # the most likely token is always kept
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        log_m = log_m.masked_fill(~keep, -float("inf"))
    probs = F.softmax(log_m / temperature, dim=-1).float()
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


def generators_for(seeds: list[int] | None, device, fallback_seed: int = 0):
    """One generator per row (seeded), or one shared generator when no per-row seeds are given."""
    if seeds is None:
        return torch.Generator(device=device).manual_seed(fallback_seed)
    return [torch.Generator(device=device).manual_seed(seed) for seed in seeds]


def rows_of(generator, active: list[int]):
    """The generators of the active rows (per-row generators), or the one shared generator (or None)."""
    return [generator[i] for i in active] if isinstance(generator, list) else generator


def left_padded(prompts: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.as_tensor(prompt)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids.to(device), attention_mask.to(device)


def _cache_field() -> str:
    """The KV cache's name in a model's arguments and outputs: `cache` in the transformers releases that renamed it
    (they warn on `past_key_values`, to be removed in 5.40), `past_key_values` before."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


CACHE = _cache_field()


def prefill(model, prompts: list[list[int]], pad_token_id: int, device):
    """(KV cache, last logits, attention mask, next positions) of left-padded prompts."""
    input_ids, attention_mask = left_padded(prompts, pad_token_id, device)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    return getattr(out, CACHE), out.logits[:, -1], attention_mask, positions[:, -1] + 1


ChooseTokens = Callable[[int, torch.Tensor, list[int]], torch.Tensor]


def decode_rows(model, prefilled, n: int, streams: int, choose: ChooseTokens, *, max_new_tokens: int,
                eos_token_ids: set[int], repeat_window: int = 0, repeat_count: int = 5,
                after_token: Callable[[int, int, Decoded], None] | None = None) -> list[Decoded]:
    """The shared decoding loop. `prefilled` holds `streams * n` rows (stream s of row i at s * n + i).

    At each step `choose(step, log_p, active)` gets the log-softmax of every remaining row of every stream
    ([streams * k, V], stream-major) and the row indices still active, and returns one token per active
    row; `after_token(step, row, decoded)` may note something about a row after its token is appended.
    """
    cache, logits, attention_mask, next_position = prefilled
    device = logits.device
    results = [Decoded([], "length") for _ in range(n)]
    repetition = [RepetitionDetector(repeat_window, repeat_count) for _ in range(n)]
    active = list(range(n))
    for step in range(max_new_tokens):
        log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        tokens = choose(step, log_p, active)
        k, still = len(active), []
        for j, i in enumerate(active):
            token, result = int(tokens[j]), results[i]
            result.tokens.append(token)
            if token in eos_token_ids:
                result.finish_reason = "eos"
            elif repetition[i].push(token):
                result.finish_reason = "repetition"
            else:
                if after_token is not None:
                    after_token(step, i, result)
                still.append(j)
        if not still or step == max_new_tokens - 1:
            break
        if len(still) < k:  # finished rows leave the batch, in every stream
            keep = torch.tensor([s * k + j for s in range(streams) for j in still], device=device)
            cache.batch_select_indices(keep)
            tokens, attention_mask, next_position = tokens[still], attention_mask[keep], next_position[keep]
            active = [active[j] for j in still]
        feed = tokens.repeat(streams)[:, None]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(feed), 1)], dim=1)
        out = model(input_ids=feed, attention_mask=attention_mask, position_ids=next_position[:, None],
                    use_cache=True, **{CACHE: cache})
        cache, logits, next_position = getattr(out, CACHE), out.logits[:, -1], next_position + 1
    return results


@torch.no_grad()
def sample(model, prompts: list[list[int]], config: SamplingConfig, *, eos_token_ids: set[int],
           pad_token_id: int = 0, seeds: list[int] | None = None) -> list[Decoded]:
    """One continuation per prompt: greedy (temperature 0) or top-p then temperature, row `i` drawing
    from a generator seeded with seeds[i]."""
    device = model.get_output_embeddings().weight.device
    generator = generators_for(seeds, device) if config.temperature > 0 else None

    def choose(step, log_p, active):
        return sample_token(log_p, config.temperature, config.top_p, rows_of(generator, active))

    return decode_rows(model, prefill(model, prompts, pad_token_id, device), len(prompts), 1, choose,
                       max_new_tokens=config.max_new_tokens, eos_token_ids=eos_token_ids,
                       repeat_window=config.repeat_window, repeat_count=config.repeat_count)


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every token that ends a reply: the tokenizer's EOS and the model's generation-config EOS tokens."""
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else configured if isinstance(configured, (list, tuple)) else [configured]
    return {tokenizer.eos_token_id, *configured} - {None}


def decoded_text(tokenizer, decoded: Decoded, eos: set[int]) -> str:
    return tokenizer.decode([t for t in decoded.tokens if t not in eos], skip_special_tokens=True).strip()
