"""Batched DDT scoring (SPEC §1): phi_t for every completion token of a dataset, and its summaries.

The backbone runs on the whole (padded) batch; only the hidden states that predict completion
tokens go through the LM head, in tiles (ddt.logprobs_and_entropy), so no [batch, length, vocab]
tensor is ever built. Batches are formed from length-sorted examples to waste little on padding;
padding (left or right) never changes a result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..inputs.data import Example, load_examples
from ..inputs.models import model_argument
from ..inputs.rendering import TokenizedExample, tokenize_dataset
from ..methods.advice import advice
from ..methods.ddt import logprobs_and_entropy, phi_statistics, phi_summary, token_phi
from ..runtime.errors import DataError, OpsftError


@dataclass
class ScoredExample:
    index: int
    phi_mean: float
    phi_std: float
    phi_pos_ratio: float
    phi_sum: float
    n_tokens: int
    truncated: bool
    token_ids: list[int] | None = None  # completion tokens, with save_tokens
    token_phi: list[float] | None = None
    token_logprob: list[float] | None = None  # log p_t(y_t) at the scoring temperature (iw-SFT's reference at 1)

    def summary(self) -> dict:
        """Everything but the index, the per-token arrays only when saved."""
        return {k: v for k, v in vars(self).items() if k != "index" and v is not None}


@dataclass
class ScoreResult:
    scored: list[ScoredExample]  # in input order
    skipped: list[DataError] = field(default_factory=list)  # with skip_invalid, each with its reason


def score(model, dataset: str | Iterable[dict], *, processing_class=None, prompt_field: str | None = None,
          completion_field: str | None = None, messages_field: str | None = None, limit: int | None = None,
          temperature: float = 1.0, max_length: int = 1024, batch_size: int = 8, save_tokens: bool = False,
          skip_invalid: bool = False, in_threshold: float = -0.05, out_threshold: float = -0.1,
          device: str | None = None, progress: bool = True):
    """DDT of a dataset as `opsft score` computes it; returns (scored, summary).

    scored: a datasets.Dataset of the rows with phi_mean, phi_std, phi_pos_ratio, phi_sum, n_tokens and truncated
    added (with save_tokens also token_ids, token_phi, token_logprob), in row order. summary: the statistics of
    methods.ddt.phi_summary, the study's reading for the data's regime (`advice`, methods/advice.py), plus
    rows_read and the rows skipped, counted by reason (with skip_invalid).

    `model`: a name, path or alias, loaded with its tokenizer, or a loaded model with its `processing_class`.
    `dataset`: a datasets.Dataset or a list of rows, in any shape `opsft score` reads (prompt/completion, messages,
    or columns named by prompt_field and completion_field), or a file or spec as `opsft score --data` takes.
    """
    from datasets import Dataset

    model, processing_class, _ = model_argument(model, processing_class, device=device, what="opsft.score")
    data = load_examples(dataset, prompt_field=prompt_field, completion_field=completion_field,
                         messages_field=messages_field, limit=limit, skip_invalid=skip_invalid)
    result = score_examples(model, processing_class, data.examples, temperature=temperature, max_length=max_length,
                            batch_size=batch_size, skip_invalid=skip_invalid, save_tokens=save_tokens,
                            source=data.source, progress=progress)
    scored = [{"index": s.index, **s.summary()} for s in result.scored]
    summary = phi_summary(scored, in_threshold=in_threshold, out_threshold=out_threshold)
    summary["advice"] = advice(summary["phi_mean"]["mean"])
    summary["rows_read"] = len(data.examples) + len(data.skipped)
    summary["skipped"] = dict(Counter(e.reason for e in data.skipped + result.skipped))
    rows = {e.index: e.row for e in data.examples}
    return Dataset.from_list([{**rows[s.pop("index")], **s} for s in scored]), summary


def score_examples(model, tokenizer, examples: Sequence[Example], *, temperature: float = 1.0,
                   max_length: int = 1024, batch_size: int = 8, skip_invalid: bool = False,
                   save_tokens: bool = False, source: str = "data", progress: bool = True) -> ScoreResult:
    """Score every example's completion under `model` at `temperature` (see tokenize_dataset for limits)."""
    tokenized, skipped = tokenize_dataset(examples, tokenizer, max_length=max_length,
                                              skip_invalid=skip_invalid, source=source)
    scored = [s for batch in iter_scored(model, tokenized, temperature=temperature, batch_size=batch_size,
                                         save_tokens=save_tokens, progress=progress) for s in batch]
    return ScoreResult(sorted(scored, key=lambda s: s.index), skipped)


def iter_scored(model, tokenized: Sequence[TokenizedExample], *, temperature: float = 1.0, batch_size: int = 8,
                save_tokens: bool = False, progress: bool = True) -> Iterator[list[ScoredExample]]:
    """Yield the scores one batch at a time (longest examples first), so a caller can save as it goes."""
    order = sorted(tokenized, key=lambda t: -len(t.input_ids))
    with tqdm(total=sum(len(t.input_ids) - t.completion_start for t in order), unit="tok", desc="scoring",
              disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            per_token = _per_token(model, [(t.input_ids, t.completion_start) for t in batch], temperature,
                                   len(batch), "right")
            yield [_scored(t, log_p, entropy, save_tokens) for t, (log_p, entropy) in zip(batch, per_token)]
            bar.update(sum(len(log_p) for log_p, _ in per_token))


def _scored(t: TokenizedExample, log_p: np.ndarray, entropy: np.ndarray, save_tokens: bool) -> ScoredExample:
    phi = token_phi(log_p, entropy)
    tokens = dict(token_ids=t.input_ids[t.completion_start:], token_phi=phi.tolist(),
                  token_logprob=log_p.tolist()) if save_tokens else {}
    return ScoredExample(index=t.index, truncated=t.truncated, **phi_statistics(phi), **tokens)


def score_token_ids(model, sequences: Sequence[tuple[Sequence[int], int]], *, temperature: float = 1.0,
                    batch_size: int = 8, padding_side: str = "right") -> list[np.ndarray]:
    """phi_t (float64 array, nats) for the tokens input_ids[start:] of each (input_ids, start) pair, in order.

    Token t is scored by the model's distribution given input_ids[:t], at `temperature`; start >= 1.
    """
    return [token_phi(log_p, entropy) for log_p, entropy in
            _per_token(model, sequences, temperature, batch_size, padding_side)]


def token_logprobs(model, sequences: Sequence[tuple[Sequence[int], int]], *, batch_size: int = 8) -> list[np.ndarray]:
    """log p(y_t | y_<t) (float64 array, nats) for the tokens input_ids[start:] of each pair, in order."""
    return [log_p for log_p, _ in _per_token(model, sequences, 1.0, batch_size, "right")]


@torch.no_grad()
def _per_token(model, sequences, temperature, batch_size, padding_side) -> list[tuple[np.ndarray, np.ndarray]]:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    out = []
    for first in range(0, len(sequences), batch_size):
        out.extend(_batch_logprobs_and_entropy(model, sequences[first:first + batch_size], temperature,
                                               padding_side))
    return out


def _batch_logprobs_and_entropy(model, batch, temperature, padding_side) -> list[tuple[np.ndarray, np.ndarray]]:
    if hasattr(model, "get_base_model"):  # PEFT: the LoRA layers are inside the base model
        model = model.get_base_model()
    device = model.get_output_embeddings().weight.device
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.zeros(len(batch), length, dtype=torch.long)
    attention_mask = torch.zeros(len(batch), length, dtype=torch.long)
    scored = torch.zeros(len(batch), length, dtype=torch.bool)  # completion tokens
    for row, (ids, start) in enumerate(batch):
        if not 1 <= start <= len(ids):
            raise ValueError(f"completion start {start} outside 1..{len(ids)}")
        offset = 0 if padding_side == "right" else length - len(ids)
        input_ids[row, offset:offset + len(ids)] = torch.as_tensor(ids)
        attention_mask[row, offset:offset + len(ids)] = 1
        scored[row, offset + start:offset + len(ids)] = True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                              position_ids=position_ids.to(device), use_cache=False).last_hidden_state
    predicts = scored[:, 1:].to(device)  # the hidden state at t predicts token t + 1
    softcap, logit_scale = head_transform(model.config)
    head = model.get_output_embeddings()
    log_probs, entropy = logprobs_and_entropy(
        hidden[:, :-1][predicts], head.weight, head.bias, input_ids[:, 1:].to(device)[predicts],
        temperature=temperature, softcap=softcap, logit_scale=logit_scale)
    cuts = np.cumsum(predicts.sum(-1).cpu().numpy())[:-1]
    return list(zip(np.split(log_probs.double().cpu().numpy(), cuts), np.split(entropy.double().cpu().numpy(), cuts)))


def head_transform(config) -> tuple[float | None, float]:
    """(final_logit_softcapping, logit_scale) that the model's forward applies to its logits."""
    text_config = config.get_text_config()
    for name in ("output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(text_config, name, None) not in (None, 1, 1.0):
            raise OpsftError(f"model type '{text_config.model_type}' scales its logits by '{name}', "
                             f"which the scorer does not support yet")
    logit_scale = getattr(text_config, "logit_scale", None)
    return getattr(text_config, "final_logit_softcapping", None), 1.0 if logit_scale is None else float(logit_scale)
