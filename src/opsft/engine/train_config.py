"""The options of one training run, shared by both trainers of `opsft train`: the SFT family
(engine/sft_trainer.py) and the preference baselines DPO and SimPO (engine/preference_training.py). The model and
data, the loss and its hyperparameters (methods/losses.py: LossConfig), the schedule, LoRA, checkpoints; each field
is also a flag of `opsft train` (runtime/options.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import SchedulerType

from ..methods.losses import METHODS, LossConfig
from ..runtime.options import REQUIRED, option

PREFERENCE_METHODS = ("dpo", "simpo")
SELF_DISTILLATION = ("sdft",)  # on-policy self-distillation, TRL's SDFTTrainer (engine/self_distillation.py)


@dataclass(kw_only=True)
class TrainConfig(LossConfig):
    loss: str = option("sft", "loss: " + ", ".join(METHODS + PREFERENCE_METHODS + SELF_DISTILLATION) + " (dpo and "
                              "simpo train on preference pairs, e.g. from opsft prefs; sdft samples from the model "
                              "and distils the model shown the completion into it)",
                       choices=list(METHODS + PREFERENCE_METHODS + SELF_DISTILLATION))
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
    iw_reference: str | None = option(None, "iw-SFT's and asft_token's reference log-probs: precompute (once, with "
                                            "the initial model; the default), frozen (a frozen copy during "
                                            "training, the adapter off under LoRA), or field (a column of the "
                                            "data). asft takes only frozen: its anchor needs the reference's whole "
                                            "distribution at train time", choices=["precompute", "frozen", "field"])
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
    sdft_generations: int = option(1, "SDFT: samples per prompt in a batch (TRL's default is 8)", at_least=1)
    sdft_max_new_tokens: int = option(256, "SDFT: longest completion the student samples", at_least=1)
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
            (not (self.loss == "asft" and self.iw_reference in ("precompute", "field")),
             f"--loss asft anchors to the reference's whole next-token distribution at every position, which "
             f"--iw-reference {self.iw_reference} cannot give: leave --iw-reference unset (or frozen), or use "
             f"--loss asft_token, the anchor at the data token from per-token log-probs"),
        ]

    def loss_config(self) -> LossConfig:
        return LossConfig(**{f: getattr(self, f) for f in LossConfig.__dataclass_fields__})


def tokens_per_step(examples: int, batch: int, tokens_per_example: float) -> float:
    """The tokens a step sees on average: an epoch of `examples` rows takes ceil(examples / batch) steps, its last
    batch partial, so

        tokens per step = examples * tokens_per_example / ceil(examples / batch)

    (batch x tokens_per_example when the batch divides the rows; all the rows when they are fewer than a batch)."""
    return examples * tokens_per_example / math.ceil(examples / batch)


def budget_steps(token_budget: float, examples: int, batch: int, tokens_per_example: float) -> int:
    """Optimizer steps that train on `token_budget` tokens (at least 1): the budget over tokens_per_step."""
    return max(1, round(token_budget / tokens_per_step(examples, batch, tokens_per_example)))
