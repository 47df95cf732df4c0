"""opsft's training options onto TRL and PEFT: the TRL trainer config (SFTConfig, DPOConfig, CPOConfig), PEFT's
LoraConfig with its target modules checked against the model, and the train-then-save every trainer ends with.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from transformers.pytorch_utils import Conv1D

from ..inputs.models import default_device
from ..runtime.checkpoints import TrainingRun
from ..runtime.errors import OpsftError, write_skipped
from .train_config import TrainConfig


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
                   rows_read: int, truncated: int, tokens_per_example: float | None = None,
                   extra: dict | None = None) -> dict:
    """Train (resuming from the run's own last checkpoint with --resume), save final/, write train_summary.json.

    Wall time and training tokens add up over resumed runs, killed ones included: each checkpoint records
    both up to it (runtime/checkpoints.py). Training tokens: TRL's own count of input tokens (`num_tokens`) where
    the trainer logs it, else examples seen times the mean tokens per example. `extra`: more entries for the
    summary (e.g. the settings a trainer used)."""
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
        **(extra or {}),
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
