"""`opsft train`: the loss family on TRL's SFTTrainer, full fine-tuning or LoRA, resumable.

Everything that can be wrong with the configuration or the data is checked before the first step.
Writes into output_dir: TRL checkpoints (checkpoint-N/), the final model (final/), the precomputed
iw-SFT reference log-probs (reference_logprobs.jsonl, resumable), and train_summary.json.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .errors import DataError, OpsftError
from .losses import METHODS, LossConfig
from .jobs import option, prepare
from .rendering import fingerprint
from .resumable import ResultLog
from .scoring import token_logprobs
from .training import FamilyCollator, FamilySFTTrainer, build_train_dataset


PREFERENCE_METHODS = ("dpo", "simpo")


@dataclass(kw_only=True)
class TrainConfig(LossConfig):
    loss: str = option("sft", "loss: " + ", ".join(METHODS + PREFERENCE_METHODS) + " (dpo and simpo train on "
                              "preference pairs, e.g. from opsft prefs)", choices=list(METHODS + PREFERENCE_METHODS))
    model: str = field(metadata={"help": "model: built-in alias (smollm2-135m), local directory or hub id"})
    data: str = field(metadata={"help": "dataset (as for opsft score)"})
    output_dir: str = option("runs/train", "output directory: checkpoints, final model, summary")
    prompt_field: str | None = option(None, "column holding the prompt (e.g. question)")
    completion_field: str | None = option(None, "column holding the completion (e.g. solution)")
    messages_field: str | None = option(None, "column holding a message list")
    limit: int | None = option(None, "train on the first N rows only")
    skip_invalid: bool = option(False, "skip bad rows (counted by reason) instead of stopping at the first")
    max_length: int = option(1024, "token limit of prompt + completion; longer completions are truncated")
    quality_field: str | None = option(None, "SFT(Q): column holding each example's quality score (>= 0)")
    iw_reference: str = option("precompute", "iw-SFT reference log-probs: precompute (once, with the initial "
                                              "model), frozen (a frozen copy during training), or field "
                                              "(a column of the data)", choices=["precompute", "frozen", "field"])
    ref_logprobs_field: str = option("token_logprob", "with --iw-reference field: the column of per-token "
                                                       "log-probs (opsft score --save-tokens writes it)")
    learning_rate: float | None = option(None, "peak learning rate (default 1e-5, or 2e-4 with --lora)")
    num_train_epochs: float = option(1.0, "epochs (ignored when --max-steps > 0)")
    max_steps: int = option(-1, "optimizer steps (overrides epochs when > 0)")
    per_device_train_batch_size: int = option(8, "examples per device per micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    lr_scheduler_type: str = option("linear", "learning-rate schedule (transformers names)")
    lr_warmup_ratio: float = option(0.0, "share of steps (in [0, 1)) with a linear learning-rate warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    seed: int = option(42, "random seed (data order, initialisation of LoRA)")
    logging_steps: int = option(10, "log metrics every N steps")
    save_steps: int = option(500, "save a checkpoint every N steps")
    save_total_limit: int | None = option(None, "keep at most N checkpoints")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    lora: bool = option(False, "train a LoRA adapter (PEFT) instead of all weights")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_target_modules: str = option("all-linear", "LoRA target modules (comma-separated names or all-linear)")
    device: str | None = option(None, "cuda / cpu (default: cuda when available)")
    report_to: str = option("none", "where TRL sends metrics: none, tensorboard, wandb, trackio, ...")
    resume: bool = option(False, "continue from the last checkpoint in --output-dir")
    progress: bool = option(True, "show progress bars")
    dpo_beta: float = option(0.1, "DPO beta (strength of the KL tie to the reference model)")
    simpo_beta: float = option(2.0, "SimPO beta (scale of the length-normalised reward)")
    simpo_gamma: float = option(1.0, "SimPO target reward margin gamma")
    sft_args: dict = field(default_factory=dict, metadata={"help": "other options of the TRL trainer config "
                                                                   "(SFTConfig, DPOConfig or CPOConfig; YAML only)",
                                                           "yaml_only": True})

    def loss_config(self) -> LossConfig:
        return LossConfig(**{f: getattr(self, f) for f in LossConfig.__dataclass_fields__})


def run_train(config: TrainConfig, *, callbacks=None) -> dict:
    """Train; returns the summary (also written to output_dir/train_summary.json)."""
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if config.loss in PREFERENCE_METHODS:
        from .preference_training import run_preference_train

        return run_preference_train(config, callbacks=callbacks)
    loss = config.loss_config()
    loss.validate()
    check_training_options(config)
    out = Path(config.output_dir)
    prepared = prepare(config)
    data, model, tokenizer = prepared.data, prepared.model, prepared.tokenizer
    tokenized, skipped = prepared.tokenized, prepared.skipped
    if not tokenized:
        raise OpsftError(f"{config.data}: no example left to train on ({len(skipped)} skipped)")
    rows = {e.index: e.row for e in data.examples}
    quality = _quality_scores(config, tokenized, rows) if loss.needs_quality else None
    ref_log_probs, ref_model = None, None
    if loss.needs_reference:
        if config.iw_reference == "field":
            ref_log_probs = _reference_from_field(config, tokenized, rows)
        elif config.iw_reference == "precompute":
            ref_log_probs = _precompute_reference(config, model, tokenized, out)
        else:
            ref_model = "adapter-off" if config.lora else copy.deepcopy(model)

    args = SFTConfig(max_length=config.max_length, **trainer_arguments(config, model, default_lr=(2e-4, 1e-5)))
    peft_config = lora_config(config)
    trainer = FamilySFTTrainer(
        model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
        train_dataset=build_train_dataset(tokenized, ref_log_probs=ref_log_probs, quality=quality),
        data_collator=FamilyCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)),
        loss_config=loss, ref_model=ref_model, callbacks=callbacks,
        sample_weights=[quality[t.index] for t in tokenized] if loss.quality_mode == "sample" and quality else None,
    )
    summary = train_and_save(trainer, config, tokenizer, examples=len(tokenized), skipped=skipped,
                             truncated=sum(t.truncated for t in tokenized))
    return summary


def trainer_arguments(config: TrainConfig, model, *, default_lr: tuple[float, float]) -> dict:
    """The TrainingArguments every trainer (SFT, DPO, CPO/SimPO) gets from the same options;
    default_lr = (with LoRA, full fine-tuning)."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    return dict(
        output_dir=config.output_dir, seed=config.seed,
        learning_rate=config.learning_rate or default_lr[0 if config.lora else 1],
        num_train_epochs=config.num_train_epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.lr_warmup_ratio,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps, save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        activation_checkpointing=config.gradient_checkpointing, report_to=config.report_to,
        bf16=on_cuda and torch.cuda.is_bf16_supported(), use_cpu=not on_cuda,
        disable_tqdm=not config.progress, **config.sft_args,
    )


def lora_config(config: TrainConfig):
    if not config.lora:
        return None
    from peft import LoraConfig

    targets = config.lora_target_modules
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets if targets == "all-linear" else targets.split(","), task_type="CAUSAL_LM")


def train_and_save(trainer, config: TrainConfig, tokenizer, *, examples: int, skipped: list, truncated: int,
                   tokens_per_example: float | None = None) -> dict:
    """Train (resuming from the last checkpoint with --resume), save final/, write train_summary.json.

    Wall time adds up over resumed runs, killed ones included: each checkpoint records the time spent up to
    it (WALL_CLOCK_FILE). Training tokens: TRL's own count of input tokens (`num_tokens`) where the trainer
    logs it, else examples seen times the mean tokens per example."""
    out = Path(config.output_dir)
    resuming = config.resume and _has_checkpoint(out)
    clock = WallClock(_seconds_before(out) if resuming else 0.0)
    trainer.add_callback(clock)
    trainer.train(resume_from_checkpoint=True if resuming else None)
    seconds = clock.this_run()
    trainer.save_model(str(out / "final"))
    tokenizer.save_pretrained(str(out / "final"))

    history = trainer.state.log_history
    logged_tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    seen = trainer.state.global_step * trainer.args.per_device_train_batch_size * \
        trainer.args.gradient_accumulation_steps * trainer.args.world_size
    summary = {
        "config": {k: v for k, v in asdict(config).items()},
        "method": config.loss,
        "examples": examples,
        "skipped": {reason: sum(e.reason == reason for e in skipped) for reason in {e.reason for e in skipped}},
        "truncated": truncated,
        "steps": trainer.state.global_step,
        "train_examples_seen": seen,
        "train_tokens": int(logged_tokens[-1]) if logged_tokens else
        (round(seen * tokens_per_example) if tokens_per_example else None),
        "train_tokens_source": "trl num_tokens" if logged_tokens else "examples seen x mean tokens per example",
        "train_seconds": round(clock.before + seconds, 2),
        "train_seconds_this_run": round(seconds, 2),
        "log_history": history,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    losses = [h["loss"] for h in history if "loss" in h]
    if losses:
        print(f"\nopsft train: {config.loss}, {trainer.state.global_step} steps, loss {losses[0]:.4f} -> "
              f"{losses[-1]:.4f}; model in {out / 'final'}", flush=True)
    return summary


def check_training_options(config: TrainConfig) -> None:
    checks = [
        (config.max_length > 1, f"--max-length must be > 1 (got {config.max_length})"),
        (config.per_device_train_batch_size >= 1, "--per-device-train-batch-size must be >= 1"),
        (config.gradient_accumulation_steps >= 1, "--gradient-accumulation-steps must be >= 1"),
        (config.max_steps > 0 or config.num_train_epochs > 0, "give --max-steps > 0 or --num-train-epochs > 0"),
        (config.learning_rate is None or config.learning_rate > 0, "--learning-rate must be > 0"),
        (config.loss != "sftq" or config.quality_field, "--loss sftq needs --quality-field (a column of scores >= 0)"),
    ]
    for ok, message in checks:
        if not ok:
            raise OpsftError(message)


def _quality_scores(config, tokenized, rows) -> dict[int, float]:
    scores = {}
    for t in tokenized:
        value = rows[t.index].get(config.quality_field)
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score) or score < 0:
            raise DataError(f"must be a number >= 0 (got {value!r})", source=config.data, row=t.index + 1,
                            field=config.quality_field, reason="invalid_quality")
        scores[t.index] = score
    if not any(scores.values()):
        raise OpsftError(f"{config.data}: every quality score in '{config.quality_field}' is 0: nothing to train on")
    return scores


def _reference_from_field(config, tokenized, rows) -> dict[int, list[float]]:
    refs = {}
    for t in tokenized:
        values = rows[t.index].get(config.ref_logprobs_field)
        n = len(t.input_ids) - t.completion_start
        if not isinstance(values, list) or len(values) < n:
            raise DataError(f"needs a list of {n} per-token reference log-probs for this tokenizer and "
                            f"--max-length (got {type(values).__name__}{'' if not isinstance(values, list) else f' of {len(values)}'});"
                            f" recompute it, or use --iw-reference precompute", source=config.data, row=t.index + 1,
                            field=config.ref_logprobs_field, reason="invalid_reference")
        refs[t.index] = [float(v) for v in values[:n]]
    return refs


def _precompute_reference(config, model, tokenized, out: Path) -> dict[int, list[float]]:
    """log p_ref(y_t) of every completion token under the initial model, once; resumable."""
    log = ResultLog(out / "reference_logprobs.jsonl", {"model": config.model, "inputs_sha256": fingerprint(tokenized)})
    todo = [t for t in tokenized if t.index not in log.done()]
    batch = config.per_device_train_batch_size
    for first in range(0, len(todo), batch):
        chunk = todo[first:first + batch]
        values = token_logprobs(model, [(t.input_ids, t.completion_start) for t in chunk], batch_size=batch)
        log.append([{"index": t.index, "log_probs": v.tolist()} for t, v in zip(chunk, values)])
    return {r["index"]: r["log_probs"] for r in log.records()}


WALL_CLOCK_FILE = "opsft_train_seconds.json"


class WallClock(TrainerCallback):
    """Training wall time: `before` (earlier runs) plus this run's, written into every checkpoint it saves."""

    def __init__(self, before: float):
        self.before, self.started = before, time.perf_counter()

    def this_run(self) -> float:
        return time.perf_counter() - self.started

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            (checkpoint / WALL_CLOCK_FILE).write_text(json.dumps({"train_seconds": self.before + self.this_run()}))


def _seconds_before(out: Path) -> float:
    """Time spent by earlier runs: the later of the last finished run's summary and the last checkpoint's clock."""
    summary = out / "train_summary.json"
    finished = json.loads(summary.read_text())["train_seconds"] if summary.exists() else 0.0
    last = get_last_checkpoint(str(out))
    clock = Path(last) / WALL_CLOCK_FILE if last else None
    return max(finished, json.loads(clock.read_text())["train_seconds"] if clock and clock.exists() else 0.0)


def _has_checkpoint(out: Path) -> bool:
    return any(out.glob("checkpoint-*"))
