"""`opsft train --loss sdft`: on-policy self-distillation with a privileged teacher (SDFT, arXiv 2601.19897;
SPEC §9), on TRL's experimental `trl.experimental.sdft.SDFTTrainer`.

The student p_theta(. | x) samples a completion y for each prompt x; the teacher is the same model shown the
reference solution c as well, q(. | x, c, y_<t), by default with the initial weights (TRL's teacher_model_kind
"base": a frozen copy, or the adapter off under LoRA). The loss is a per-token divergence between the two along
the student's own sample (TRL's default: top-k logit distillation, k = 100, alpha = 0.5). Hinted Decoding uses
the same two conditionals to *write data* (methods/hinted.py); SDFT uses them as a *loss*.

Data: prompt/completion rows as for the SFT family; the completion becomes `privileged_context`, and TRL's
teacher prompt is its template (default "{prompt}\\n\\n{privileged_context}") on the prompt's last user turn.
opsft's choices over TRL's defaults, each an option: one sample per prompt (`--sdft-generations 1`, TRL: 8;
SDFT's loss needs no group of samples, and 8 copies of a prompt in a batch of 8 would let a step see one
problem), and `--sdft-max-new-tokens` for the sample's length. Every other SDFTConfig field (teacher_model_kind,
distillation_mode, ...) can be set under sft_args; the summary records what was used.

What this module relies on in TRL's experimental trainer, tested in tests/test_self_distillation.py: the
`prompt` / `privileged_context` columns, `_tokenize_prompts` (overridden: message prompts go through opsft's plain
format when the tokenizer has no chat template), `sample_rollouts` (overridden to count the tokens the student
trains on: prompt + sampled completion, across processes) and the teacher inputs it builds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import datasets

with warnings.catch_warnings():  # TRL warns on every import from trl.experimental; this module says so once, above
    warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
    from trl.experimental.sdft import SDFTConfig
    from trl.experimental.sdft import SDFTTrainer as TRLSDFTTrainer

from ..inputs.data import load_examples
from ..inputs.models import load_model
from ..inputs.prepare import model_dtype
from ..inputs.rendering import fitting_prompts, prompt_format, prompt_ids, render_plain, rows_sha256, text_of
from ..runtime.checkpoints import TrainingRun
from ..runtime.errors import nothing_left
from .train_config import TrainConfig
from .trl_setup import lora_config, train_and_save, trl_arguments

DEFAULT_LEARNING_RATE = (2e-4, 1e-5)  # (with LoRA, full fine-tuning): the SFT family's
RECORDED = ("teacher_model_kind", "distillation_mode", "distillation_topk", "distillation_alpha",
            "distillation_is_clip", "num_generations", "max_completion_length", "teacher_prompt_template",
            "temperature")  # the SDFTConfig fields the summary records


class SDFTTrainer(TRLSDFTTrainer):
    """TRL's SDFTTrainer, which also renders message prompts in opsft's plain format for a tokenizer without a chat
    template, and counts the tokens the student trains on (`num_tokens`, as TRL's other trainers log it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._total_train_tokens = 0  # restored from the checkpoint on resume (runtime/checkpoints.py)

    def _tokenize_prompts(self, prompts: list) -> list[list[int]]:
        if prompts and isinstance(prompts[0], list) and prompt_format(self._tokenizer) == "plain":
            prompts = [render_plain(p, generation_prompt=True) for p in prompts]
        return super()._tokenize_prompts(prompts)

    def sample_rollouts(self, inputs: list[dict]) -> dict:
        batch = super().sample_rollouts(inputs)
        if self.model.training:
            tokens = batch["prompt_mask"].sum() + batch["raw_completion_lengths"].sum()
            self._total_train_tokens += int(self.accelerator.gather(tokens.reshape(1)).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return batch


def run_sdft_train(config: TrainConfig, *, callbacks=None) -> dict:
    """Train with SDFT; returns the summary (also output_dir/train_summary.json), which records the SDFT settings."""
    args = trl_arguments(config, SDFTConfig, default_lr=DEFAULT_LEARNING_RATE, max_prompt_length=None,
                         max_completion_length=config.sdft_max_new_tokens, num_generations=config.sdft_generations)
    if not config.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    data = load_examples(config.data, prompt_field=config.prompt_field, completion_field=config.completion_field,
                         messages_field=config.messages_field, limit=config.limit, skip_invalid=config.skip_invalid)
    model, tokenizer = load_model(config.model, device=config.device, dtype=model_dtype(config))
    skipped = list(data.skipped)
    # the prompt as given (message lists stay message lists: the trainer renders them), the completion's text as the
    # privileged context; a prompt that leaves no room for the sample under --max-length is a row error (TRL would
    # cut it from the left), or with --skip-invalid a counted skip, as for every command that samples
    fitting = fitting_prompts(data.examples, lambda e: prompt_ids(e.prompt, tokenizer), config.sdft_max_new_tokens,
                              config.max_length, source=config.data, skip_invalid=config.skip_invalid,
                              skipped=skipped)
    rows = [{"prompt": e.prompt, "privileged_context": text_of(e.completion)} for e in data.examples
            if e.index in fitting]
    if not rows:
        raise nothing_left(config.data, "prompt left to train on", skipped)
    peft_config = lora_config(config, model)
    run = TrainingRun.claim(Path(config.output_dir), config, inputs_sha256=rows_sha256(rows))
    if run.finished is not None:
        return run.finished
    trainer = SDFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    return train_and_save(trainer, run, config, tokenizer, examples=len(rows), skipped=skipped,
                          rows_read=len(data.examples) + len(data.skipped), truncated=0,
                          extra={"sdft": {name: getattr(args, name) for name in RECORDED}})

