"""`opsft train`: the loss family on TRL's SFTTrainer, full fine-tuning or LoRA, resumable.

Everything that can be wrong with the configuration or the data is checked before the first step.
Writes into output_dir: TRL checkpoints (checkpoint-N/), the final model (final/), the precomputed
iw-SFT's and asft_token's reference log-probs (reference_logprobs.jsonl, resumable), and train_summary.json.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..engine.scoring import token_logprobs
from ..engine.sft_config import LOSS_HYPERPARAMETERS, SFTConfig
from ..engine.sft_trainer import SFTTrainer, build_train_dataset
from ..engine.train_config import PREFERENCE_METHODS, SELF_DISTILLATION, TrainConfig
from ..engine.trl_setup import lora_config, train_and_save, trl_arguments
from ..inputs.prepare import prepare
from ..inputs.rendering import fingerprint
from ..runtime.checkpoints import TrainingRun
from ..runtime.errors import OpsftError, nothing_left
from ..runtime.resumable import ShardedLog


def run_train(config: TrainConfig, *, callbacks=None) -> dict:
    """Train; returns the summary (also written to output_dir/train_summary.json)."""
    if config.loss in PREFERENCE_METHODS:
        from ..engine.preference_training import run_preference_train

        return run_preference_train(config, callbacks=callbacks)
    if config.loss in SELF_DISTILLATION:
        from ..engine.self_distillation import run_sdft_train

        return run_sdft_train(config, callbacks=callbacks)
    loss = config.loss_config()
    args = trl_arguments(config, SFTConfig, default_lr=(2e-4, 1e-5), max_length=config.max_length,
                         loss_type=loss.loss, logits_memory_mb=config.logits_memory_mb,
                         **{f: getattr(loss, f) for f in LOSS_HYPERPARAMETERS})
    out = Path(config.output_dir)
    prepared = prepare(config)
    data, model, tokenizer = prepared.data, prepared.model, prepared.tokenizer
    tokenized, skipped = prepared.tokenized, prepared.skipped
    if not tokenized:
        raise nothing_left(config.data, "example left to train on", skipped)
    rows = {e.index: e for e in data.examples}
    quality = _quality_scores(config, tokenized, rows) if loss.needs_quality else None
    peft_config = lora_config(config, model)
    run = TrainingRun.claim(out, config, inputs_sha256=fingerprint(tokenized))
    if run.finished is not None:
        return run.finished
    ref_log_probs = None  # "frozen" (and asft): the trainer's own frozen copy (adapter off under LoRA)
    if loss.needs_reference_log_probs and config.iw_reference == "field":
        ref_log_probs = _reference_from_field(config, tokenized, rows)
    elif loss.needs_reference_log_probs and config.iw_reference in (None, "precompute"):
        ref_log_probs = _precompute_reference(config, model, tokenized, out)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                         train_dataset=build_train_dataset(tokenized, ref_log_probs=ref_log_probs, quality=quality),
                         callbacks=callbacks)
    return train_and_save(trainer, run, config, tokenizer, examples=len(tokenized), skipped=skipped,
                          rows_read=len(data.examples) + len(data.skipped),
                          truncated=sum(t.truncated for t in tokenized))


def _quality_scores(config, tokenized, rows) -> dict[int, float]:
    scores = {}
    for t in tokenized:
        value = rows[t.index].row.get(config.quality_field)
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score) or score < 0:
            raise rows[t.index].error(f"must be a number >= 0 (got {value!r})", source=config.data,
                                      field=config.quality_field, reason="invalid_quality")
        scores[t.index] = score
    if not any(scores.values()):
        raise OpsftError(f"{config.data}: every quality score in '{config.quality_field}' is 0: nothing to train on")
    return scores


def _reference_from_field(config, tokenized, rows) -> dict[int, list[float]]:
    refs = {}
    for t in tokenized:
        values = rows[t.index].row.get(config.ref_logprobs_field)
        n = len(t.input_ids) - t.completion_start
        if not isinstance(values, list) or len(values) < n:
            got = type(values).__name__ + (f" of {len(values)}" if isinstance(values, list) else "")
            raise rows[t.index].error(f"needs a list of {n} per-token reference log-probs for this tokenizer and "
                                      f"--max-length (got {got}); recompute it, or use --iw-reference precompute",
                                      source=config.data, field=config.ref_logprobs_field, reason="invalid_reference")
        refs[t.index] = [float(v) for v in values[:n]]
    return refs


def _precompute_reference(config, model, tokenized, out: Path) -> dict[int, list[float]]:
    """log p_ref(y_t) of every completion token under the initial model, once; resumable. Under `accelerate
    launch` each process computes its share (resumable.ShardedLog), and every process then reads them all."""
    log = ShardedLog(out, {"model": config.model, "inputs_sha256": fingerprint(tokenized)},
                     name="reference_logprobs")
    todo = log.mine(tokenized)
    batch = config.per_device_train_batch_size
    for first in range(0, len(todo), batch):
        chunk = todo[first:first + batch]
        values = token_logprobs(model, [(t.input_ids, t.completion_start) for t in chunk], batch_size=batch)
        log.append([{"index": t.index, "log_probs": v.tolist()} for t, v in zip(chunk, values)])
    return {r["index"]: r["log_probs"] for r in log.merged(on_every_process=True)}
