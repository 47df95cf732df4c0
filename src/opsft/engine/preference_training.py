"""`opsft train --loss dpo | simpo`: the offline-RL baselines (SPEC §4), on TRL's own trainers.

  dpo    TRL's DPOTrainer: -log sigmoid(beta * [log pi/pi_ref (chosen) - log pi/pi_ref (rejected)]);
         the reference is a frozen copy of the starting model (with LoRA: the model, adapter off).
  simpo  TRL's CPOTrainer with loss_type "simpo" and cpo_alpha 0 (no NLL term):
         -log sigmoid(beta * [mean log pi (chosen) - mean log pi (rejected)] - gamma); no reference model.

Same model, LoRA, schedule and checkpoint options as the SFT family; the data are preference pairs
({prompt, chosen, rejected}, e.g. from `opsft prefs`). Defaults: DPO beta 0.1; SimPO beta 2.0 and
gamma 1.0 (gamma / beta = 0.5, the SimPO paper's recommended ratio); learning rate 5e-7 for full
fine-tuning and 5e-6 with LoRA (DPO and SimPO are run with far smaller rates than SFT).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import datasets
import numpy as np

from ..inputs.data import load_preferences
from ..inputs.models import load_model
from ..inputs.prepare import model_dtype
from ..inputs.rendering import (
    prompt_fills_max_length,
    prompt_format,
    render_plain,
    rows_sha256,
    text_of,
    tokenize_example,
)
from ..runtime.checkpoints import TrainingRun
from ..runtime.errors import DataError, nothing_left
from .train_config import TrainConfig
from .trl_setup import lora_config, train_and_save, trl_arguments

DEFAULT_LEARNING_RATE = (5e-6, 5e-7)  # (with LoRA, full fine-tuning)


def run_preference_train(config: TrainConfig, *, callbacks=None) -> dict:
    from trl import DPOConfig, DPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    if config.loss == "dpo":
        args = trl_arguments(config, DPOConfig, default_lr=DEFAULT_LEARNING_RATE, max_length=config.max_length,
                             beta=config.dpo_beta)
    else:
        args = trl_arguments(config, CPOConfig, default_lr=DEFAULT_LEARNING_RATE, max_length=config.max_length,
                             loss_type="simpo", cpo_alpha=0.0, beta=config.simpo_beta, simpo_gamma=config.simpo_gamma,
                             remove_unused_columns=False)
    rows, skipped = load_preferences(config.data, limit=config.limit, skip_invalid=config.skip_invalid)
    rows_read = len(rows) + len(skipped)
    if not rows:
        raise nothing_left(config.data, "preference pair left to train on", skipped)
    if not config.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model, tokenizer = load_model(config.model, device=config.device, dtype=model_dtype(config))
    rows, mean_tokens, truncated = fit_pairs(rows, tokenizer, config.max_length, source=config.data,
                                             skip_invalid=config.skip_invalid, skipped=skipped)
    if not rows:
        raise nothing_left(config.data, f"preference pair left that fits --max-length {config.max_length}", skipped)
    rows = [{k: v for k, v in row.items() if k not in ("row", "line")} for row in rows]
    if prompt_format(tokenizer) == "plain":  # no chat template: message lists become the plain format
        rows = [_as_plain(row) for row in rows]
    peft_config = lora_config(config, model)
    run = TrainingRun.claim(Path(config.output_dir), config, inputs_sha256=rows_sha256(rows))
    if run.finished is not None:
        return run.finished
    if config.loss == "dpo":
        trainer = DPOTrainer(model=model, ref_model=None if config.lora else copy.deepcopy(model), args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=peft_config, callbacks=callbacks)
    else:
        trainer = CPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    return train_and_save(trainer, run, config, tokenizer, examples=len(rows), skipped=skipped, rows_read=rows_read,
                          truncated=truncated, tokens_per_example=mean_tokens)


def _as_plain(row: dict) -> dict:
    if isinstance(row["prompt"], str):
        return row
    return {"prompt": render_plain(row["prompt"], generation_prompt=True), "chosen": text_of(row["chosen"]),
            "rejected": text_of(row["rejected"])}


def fit_pairs(rows: list[dict], tokenizer, max_length: int, *, source: str, skip_invalid: bool = False,
              skipped: list[DataError] | None = None) -> tuple[list[dict], float, int]:
    """The pairs as TRL will tokenize them (prompt + chosen, prompt + rejected: chat template or plain
    format, EOS). Returns (pairs kept, mean training tokens per pair, pairs with a side over max_length,
    which TRL truncates). A prompt of max_length tokens or more (TRL would drop the pair) is an error, or
    with skip_invalid counted in `skipped`."""
    kept, sizes = [], []
    for row in rows:
        (chosen, start), (rejected, _) = (tokenize_example(row["prompt"], row[side], tokenizer)
                                          for side in ("chosen", "rejected"))
        if start >= max_length:
            error = prompt_fills_max_length(start, max_length, source=source, row=row["row"], line=row["line"])
            if not skip_invalid:
                raise error
            skipped.append(error)
            continue
        kept.append(row)
        sizes.append((len(chosen), len(rejected)))
    mean = float(np.mean([c + r for c, r in sizes])) if sizes else math.nan
    return kept, mean, sum(max(c, r) > max_length for c, r in sizes)
