"""What the job commands (score, realign, train) share: how every one starts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime.errors import DataError
from .data import LoadedData, load_examples
from .models import load_model
from .rendering import TokenizedExample, tokenize_dataset


@dataclass
class Prepared:
    data: LoadedData
    model: object
    tokenizer: object
    tokenized: list[TokenizedExample]  # the examples as training will see them
    skipped: list[DataError]  # rows left out (with skip_invalid), loading and tokenizing together


def model_dtype(config) -> torch.dtype | None:
    """bf16 or fp32 when the config says (its `bf16` option), else None: the device's default (inputs/models.py)."""
    bf16 = getattr(config, "bf16", None)
    return None if bf16 is None else torch.bfloat16 if bf16 else torch.float32


def prepare(config) -> Prepared:
    """Load and check the data, load the model, tokenize as training does; silence the loaders' progress
    bars when the job's are off. `config` is a job config (data, model, field mapping, limits)."""
    if not config.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    data = load_examples(config.data, prompt_field=config.prompt_field, completion_field=config.completion_field,
                         messages_field=config.messages_field, answer_field=getattr(config, "answer_field", None),
                         limit=config.limit, skip_invalid=config.skip_invalid)
    model, tokenizer = load_model(config.model, device=config.device, dtype=model_dtype(config))
    tokenized, skipped = tokenize_dataset(data.examples, tokenizer, max_length=config.max_length,
                                          skip_invalid=config.skip_invalid, source=config.data)
    return Prepared(data, model, tokenizer, tokenized, data.skipped + skipped)
