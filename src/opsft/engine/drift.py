"""Distribution drift: how far a fine-tuned model moved from its base, measured with DDT (SPEC §1).

Sample completions y ~ p_base(· | x) at temperature 1 (no top-p) on a prompt set, then score them
under the fine-tuned model p_tuned:

    drift = mean over samples of phi_mean(y | x; p_tuned),   phi_t = log p_tuned(y_t) + H(p_tuned,t)

For p_tuned = p_base, E[phi_t] = 0 in every context, so drift is 0 up to sampling noise (its standard
error is reported). The further the tuned model moved away from what its base writes, the more negative
it gets. It needs no reference data, and it catches forgetting that an accuracy on a few tasks misses.
"""

from __future__ import annotations

import numpy as np

from ..runtime.resumable import ShardedLog
from .generation import SamplingConfig, decoded_text, eos_token_ids, row_seed, sample
from .scoring import score_token_ids


def sample_base(model, tokenizer, prompts: dict[int, list[int]], *, samples: int, max_new_tokens: int, seed: int,
                batch_size: int, log: ShardedLog) -> None:
    """The base model's own samples (temperature 1, full distribution) of this process's share (sample
    number i * samples + j), appended to `log` per batch."""
    eos = eos_token_ids(model, tokenizer)
    rows = log.mine([(i, j) for i in sorted(prompts) for j in range(samples)], index=lambda r: r[0] * samples + r[1])
    config = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        decoded = sample(model, [prompts[i] for i, _ in chunk], config, eos_token_ids=eos,
                         pad_token_id=tokenizer.pad_token_id or 0, seeds=[row_seed(seed, i, j) for i, j in chunk])
        log.append([{"index": i * samples + j, "prompt_index": i, "tokens": d.tokens,
                     "text": decoded_text(tokenizer, d, eos), "finish_reason": d.finish_reason}
                    for (i, j), d in zip(chunk, decoded)])


def drift_of(model, records: list[dict], prompts: dict[int, list[int]], *, batch_size: int) -> dict:
    """phi_mean of each base sample under `model`, and their mean with its standard error."""
    sequences = [(prompts[r["prompt_index"]] + r["tokens"], len(prompts[r["prompt_index"]]))
                 for r in records if r["tokens"]]
    phis = score_token_ids(model, sequences, temperature=1.0, batch_size=batch_size)
    means = np.array([float(np.mean(phi)) for phi in phis])
    tokens = np.concatenate(phis) if phis else np.zeros(0)
    return {
        "drift": float(means.mean()), "drift_sem": float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1
        else float("nan"), "samples": len(means), "tokens": int(tokens.size),
        "token_phi_mean": float(tokens.mean()) if tokens.size else float("nan"),
        "empty_samples": sum(not r["tokens"] for r in records),  # no token to score (EOS first): not in the mean
    }
