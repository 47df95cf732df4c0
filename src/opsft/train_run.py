"""`opsft train`: the loss family on TRL's SFTTrainer, full fine-tuning or LoRA, resumable.

Everything that can be wrong with the configuration or the data is checked before the first step.
Writes into output_dir: TRL checkpoints (checkpoint-N/), the final model (final/), the precomputed
iw-SFT reference log-probs (reference_logprobs.jsonl, resumable), and train_summary.json.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import SchedulerType
from transformers.pytorch_utils import Conv1D

from .checkpoints import TrainingRun
from .errors import OpsftError, nothing_left, write_skipped
from .jobs import prepare
from .losses import METHODS, LossConfig
from .models import default_device
from .options import REQUIRED, option
from .rendering import fingerprint
from .resumable import ShardedLog
from .scoring import token_logprobs
from .training import FamilyCollator, FamilySFTTrainer, build_train_dataset


PREFERENCE_METHODS = ("dpo", "simpo")


@dataclass(kw_only=True)
class TrainConfig(LossConfig):
    loss: str = option("sft", "loss: " + ", ".join(METHODS + PREFERENCE_METHODS) + " (dpo and simpo train on "
                              "preference pairs, e.g. from opsft prefs)", choices=list(METHODS + PREFERENCE_METHODS))
    model: str = option(REQUIRED, "model: built-in alias (smollm2-135m), local directory or hub id")
    data: str = option(REQUIRED, "dataset (as for opsft score)")
    output_dir: str = option("runs/train", "output directory: checkpoints, final model, summary", output_dir=True)
    prompt_field: str | None = option(None, "column holding the prompt (e.g. question)")
    completion_field: str | None = option(None, "column holding the completion (e.g. solution)")
    messages_field: str | None = option(None, "column holding a message list")
    limit: int | None = option(None, "train on the first N rows only", at_least=1)
    skip_invalid: bool = option(False, "skip bad rows (counted by reason) instead of stopping at the first")
    max_length: int = option(1024, "token limit of prompt + completion; longer completions are truncated",
                             at_least=2)
    quality_field: str | None = option(None, "SFT(Q): column holding each example's quality score (>= 0)")
    iw_reference: str = option("precompute", "iw-SFT's and ASFT's reference log-probs: precompute (once, with "
                                              "the initial model), frozen (a frozen copy during training), or "
                                              "field (a column of the data)", choices=["precompute", "frozen", "field"])
    ref_logprobs_field: str = option("token_logprob", "with --iw-reference field: the column of per-token "
                                                       "log-probs (opsft score --save-tokens writes it)")
    learning_rate: float | None = option(None, "peak learning rate (default 1e-5, or 2e-4 with --lora)", above=0)
    num_train_epochs: float = option(1.0, "epochs (ignored when --max-steps > 0)", at_least=0)
    max_steps: int = option(-1, "optimizer steps (overrides epochs when > 0; -1: use the epochs)", at_least=-1)
    per_device_train_batch_size: int = option(8, "examples per device per micro-batch", at_least=1)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step", at_least=1)
    lr_scheduler_type: str = option("linear", "learning-rate schedule (transformers names)",
                                    choices=[s.value for s in SchedulerType])
    lr_warmup_ratio: float = option(0.0, "share of steps with a linear learning-rate warm-up", at_least=0, below=1)
    weight_decay: float = option(0.0, "AdamW weight decay", at_least=0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: no clipping)", at_least=0)
    seed: int = option(42, "random seed (data order, initialisation of LoRA)", at_least=0)
    logging_steps: int = option(10, "log metrics every N steps", at_least=1)
    save_steps: int = option(500, "save a checkpoint every N steps", at_least=1)
    save_total_limit: int | None = option(None, "keep at most N checkpoints", at_least=1)
    logits_memory_mb: int | None = option(None, "the step takes log p and H from the model's full logits while "
                                          "batch x length x vocabulary x 4 bytes fit in this many MiB, else from "
                                          "TRL's fused LM head (default: 1024 on a CPU, where the step is then "
                                          "faster; 0, always fused, on CUDA)", at_least=0)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    lora: bool = option(False, "train a LoRA adapter (PEFT) instead of all weights")
    lora_r: int = option(16, "LoRA rank", at_least=1)
    lora_alpha: int = option(32, "LoRA alpha", at_least=1)
    lora_dropout: float = option(0.05, "LoRA dropout", at_least=0, below=1)
    lora_target_modules: str = option("all-linear", "LoRA target modules (comma-separated names or all-linear)")
    device: str | None = option(None, "cuda / cpu (default: cuda when available)", device=True)
    bf16: bool | None = option(None, "weights in bf16 and bf16 mixed precision (default: on GPUs that support it; "
                                     "on a CPU it works but is slow: the GPU path, for testing)")
    report_to: str = option("none", "where TRL sends metrics: none, tensorboard, wandb, trackio, ...")
    resume: bool = option(False, "continue the run in --output-dir from its last checkpoint (refused if its "
                                 "settings or data differ)")
    overwrite: bool = option(False, "discard an earlier run in --output-dir (its checkpoints, final model and "
                                    "summary) and start afresh")
    progress: bool = option(True, "show progress bars")
    dpo_beta: float = option(0.1, "DPO beta (strength of the KL tie to the reference model)", above=0)
    simpo_beta: float = option(2.0, "SimPO beta (scale of the length-normalised reward)", above=0)
    simpo_gamma: float = option(1.0, "SimPO target reward margin gamma", at_least=0)
    sft_args: dict = option(help_text="other options of the TRL trainer config (SFTConfig, DPOConfig or CPOConfig; "
                                      "YAML only)", factory=dict, yaml_only=True)

    def rules(self):
        targets = self.lora_target_modules.split(",")
        return super().rules() + [
            (self.max_steps != 0, "--max-steps must be > 0, or -1 to train for --num-train-epochs"),
            (self.max_steps > 0 or self.num_train_epochs > 0, "give --max-steps > 0 or --num-train-epochs > 0"),
            (self.loss != "sftq" or bool(self.quality_field),
             "--loss sftq needs --quality-field (a column of scores >= 0)"),
            (all(t.strip() for t in targets), f"--lora-target-modules {self.lora_target_modules!r}: comma-separated "
                                              f"module names (e.g. q_proj,v_proj) or all-linear"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
        ]

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
    args = trl_arguments(config, SFTConfig, default_lr=(2e-4, 1e-5), max_length=config.max_length)
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
    ref_log_probs, ref_model = None, None
    if loss.needs_reference:
        if config.iw_reference == "field":
            ref_log_probs = _reference_from_field(config, tokenized, rows)
        elif config.iw_reference == "precompute":
            ref_log_probs = _precompute_reference(config, model, tokenized, out)
        else:
            ref_model = "adapter-off" if config.lora else copy.deepcopy(model)

    trainer = FamilySFTTrainer(
        model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
        train_dataset=build_train_dataset(tokenized, ref_log_probs=ref_log_probs, quality=quality),
        data_collator=FamilyCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)),
        loss_config=loss, ref_model=ref_model, callbacks=callbacks, logits_memory_mb=config.logits_memory_mb,
        sample_weights=[quality[t.index] for t in tokenized] if loss.quality_mode == "sample" and quality else None,
    )
    return train_and_save(trainer, run, config, tokenizer, examples=len(tokenized), skipped=skipped,
                          rows_read=len(data.examples) + len(data.skipped),
                          truncated=sum(t.truncated for t in tokenized))


def trl_arguments(config: TrainConfig, trl_config_class, *, default_lr: tuple[float, float], **specific):
    """The TRL trainer config (SFTConfig, DPOConfig, CPOConfig) from opsft's options, the loss's `specific`
    ones and sft_args, built before any model loads: an unknown, clashing or refused sft_args key is a
    one-line error. default_lr = (with LoRA, full fine-tuning)."""
    on_cuda = (torch.device(config.device) if config.device else default_device()).type == "cuda"
    ours = dict(
        output_dir=config.output_dir, seed=config.seed,
        learning_rate=config.learning_rate or default_lr[0 if config.lora else 1],
        num_train_epochs=config.num_train_epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.lr_warmup_ratio,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps, save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        **{checkpointing_option(trl_config_class): config.gradient_checkpointing}, report_to=config.report_to,
        bf16=(on_cuda and torch.cuda.is_bf16_supported()) if config.bf16 is None else config.bf16,
        use_cpu=not on_cuda,
        disable_tqdm=not config.progress, **specific,
    )
    name = trl_config_class.__name__
    known = {f.name for f in dataclasses.fields(trl_config_class)}
    for key in config.sft_args:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            raise OpsftError(f"sft_args: {key!r} is not an option of TRL's {name}"
                             + (f" (did you mean {', '.join(close)}?)" if close else ""))
        if key in ours or key in CHECKPOINTING_OPTIONS:
            raise OpsftError(f"sft_args: {key!r} is set from opsft's own options (see opsft train --help); "
                             f"set it there, not under sft_args")
    try:
        return trl_config_class(**ours, **config.sft_args)
    except (ValueError, TypeError) as e:
        raise OpsftError(f"sft_args: TRL's {name} refused these options: {e}") from None


CHECKPOINTING_OPTIONS = ("activation_checkpointing", "gradient_checkpointing")


def checkpointing_option(trl_config_class) -> str:
    """The TrainingArguments field that turns activation checkpointing on in the installed transformers:
    `activation_checkpointing` in newer 5.x releases (where `gradient_checkpointing` is its deprecated alias),
    `gradient_checkpointing` in older ones (5.17 has no other)."""
    fields = {f.name for f in dataclasses.fields(trl_config_class)}
    return next(name for name in CHECKPOINTING_OPTIONS if name in fields)


LORA_LAYERS = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, Conv1D,
               torch.nn.MultiheadAttention)  # what PEFT's LoRA accepts


def lora_config(config: TrainConfig, model):
    """PEFT's LoraConfig, with every named target module checked against the model."""
    if not config.lora:
        return None
    from peft import LoraConfig

    targets = config.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",")]
        modules = dict(model.named_modules())
        layers = sorted({name.rsplit(".", 1)[-1] for name, m in modules.items() if isinstance(m, torch.nn.Linear)})
        for target in targets:
            matched = [m for name, m in modules.items() if name == target or name.endswith("." + target)]
            if not matched:
                raise OpsftError(f"--lora-target-modules: model '{config.model}' has no module named {target!r} "
                                 f"(its linear layers: {', '.join(layers)})")
            if not all(isinstance(m, LORA_LAYERS) for m in matched):
                raise OpsftError(f"--lora-target-modules: {target!r} is a {type(matched[0]).__name__}, not a layer "
                                 f"LoRA adapts (its linear layers: {', '.join(layers)})")
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def train_and_save(trainer, run: TrainingRun, config: TrainConfig, tokenizer, *, examples: int, skipped: list,
                   rows_read: int, truncated: int, tokens_per_example: float | None = None) -> dict:
    """Train (resuming from the run's own last checkpoint with --resume), save final/, write train_summary.json.

    Wall time and training tokens add up over resumed runs, killed ones included: each checkpoint records
    both up to it (checkpoints.py). Training tokens: TRL's own count of input tokens (`num_tokens`) where
    the trainer logs it, else examples seen times the mean tokens per example."""
    out = Path(config.output_dir)
    progress = run.callback(trainer)
    trainer.add_callback(progress)
    trainer.train(resume_from_checkpoint=run.resume_from)
    seconds = progress.this_run()
    trainer.save_model(str(out / "final"))  # the main process writes; under `accelerate launch` the others wait
    main = trainer.is_world_process_zero()
    if main:
        tokenizer.save_pretrained(str(out / "final"))

    history = trainer.state.log_history
    logged_tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    seen = trainer.state.global_step * trainer.args.per_device_train_batch_size * \
        trainer.args.gradient_accumulation_steps * trainer.args.world_size
    summary = {
        "config": {k: v for k, v in asdict(config).items()},
        "method": config.loss,
        "rows_read": rows_read,
        "examples": examples,
        "skipped": dict(Counter(e.reason for e in skipped)),
        "truncated": truncated,
        "steps": trainer.state.global_step,
        "train_examples_seen": seen,
        "train_tokens": int(logged_tokens[-1]) if logged_tokens else
        (round(seen * tokens_per_example) if tokens_per_example else None),
        "train_tokens_source": "trl num_tokens" if logged_tokens else "examples seen x mean tokens per example",
        "train_seconds": round(progress.before_seconds + seconds, 2),
        "train_seconds_this_run": round(seconds, 2),
        "resumed_from": run.resume_from,
        **({"lm_head_calls_this_run": dict(trainer.head_calls)}  # the main process's forward passes, each way
           if hasattr(trainer, "head_calls") else {}),
        "log_history": history,
    }
    if main:
        write_skipped(out / "skipped.jsonl", skipped)
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    trainer.accelerator.wait_for_everyone()  # every file written before any process goes on to read them
    losses = [h["loss"] for h in history if "loss" in h]
    if losses and main:
        print(f"\nopsft train: {config.loss}, {trainer.state.global_step} steps, loss {losses[0]:.4f} -> "
              f"{losses[-1]:.4f}; model in {out / 'final'}", flush=True)
    return summary


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
