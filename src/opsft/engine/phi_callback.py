"""`opsft.PhiCallback`: how on-policy the training data are, while training (DDT, docs/methods.md).

Every logging step, two numbers over completion tokens, phi_t = log p_t(y_t) + H(p_t) under the current model:

    phi/mean               the mean phi_t over the tokens            (0: the model's own kind of text)
    phi/on_policy_share    the share of examples with phi_mean >= -0.05 (the authors' in-distribution mark)

opsft.SFTTrainer logs both from the training batches themselves: its step already computes log p_t(y_t) and
H(p_t) for the loss, so they cost two reductions. On any other TRL trainer (a plain trl.SFTTrainer) nothing
exposes per-token values: TRL logs the batch's mean NLL and mean entropy, whose difference is the mean phi, but
not per example, so the share cannot be had from them. There the callback scores a fixed probe batch (the first
`probe_size` training rows) under the current model, every logging step (from its logits while they fit the
device's budget, as opsft's step does, else with TRL's fused LM head: no [batch x length x vocabulary] tensor),
and logs phi/probe_mean and phi/probe_on_policy_share.

With `drift_dataset` (held-out rows; their completions are not used), on either trainer, it also reports how far
the model has moved from where it started (engine/drift.py): the model as the callback is made samples one answer
to each prompt (temperature 1, full distribution); every `drift_steps` steps those samples are scored under the
current model,

    phi/drift              mean over samples of phi_mean(y | x; current model)   (0 at the start; below 0: moved)
    phi/drift_sem          its standard error over the samples

    trainer = trl.SFTTrainer(model=..., args=..., train_dataset=...)
    trainer.add_callback(PhiCallback(trainer))
"""

from __future__ import annotations

import contextlib

import torch
from transformers import TrainerCallback

from ..inputs.data import load_examples
from ..inputs.rendering import prompt_ids
from ..methods.ddt import phi_metrics
from ..runtime.resumable import MemoryLog
from . import lm_head
from .drift import drift_of, sample_base
from .sft_trainer import SFTTrainer


class PhiCallback(TrainerCallback):
    """Logs phi/... keys every logging step (module doc). `trainer`: the trainer it is added to (TRL's callback
    convention); `probe_size`: the rows scored on a trainer that is not opsft's; `logits_memory_mb`: as
    SFTConfig's (None: the device's default; 0: always TRL's fused head). `drift_dataset`: held-out rows in any
    shape `opsft score` reads, for phi/drift every `drift_steps` steps (default: the logging steps), from
    `drift_max_new_tokens`-token samples drawn with `seed`."""

    def __init__(self, trainer, probe_size: int = 4, logits_memory_mb: int | None = None, *, drift_dataset=None,
                 drift_steps: int | None = None, drift_max_new_tokens: int = 128, drift_batch_size: int = 8,
                 seed: int = 0):
        self.trainer = trainer
        self.logits_memory_mb = logits_memory_mb
        self.probe = None
        if not isinstance(trainer, SFTTrainer):  # opsft's own step logs phi/mean and phi/on_policy_share
            rows = [trainer.train_dataset[i] for i in range(min(probe_size, len(trainer.train_dataset)))]
            self.probe = trainer.data_collator([{k: r[k] for k in ("input_ids", "labels") if k in r} for r in rows])
        if drift_steps is not None and drift_steps < 1:
            raise ValueError(f"PhiCallback: drift_steps must be >= 1 (got {drift_steps})")
        self.drift_steps, self.drift_batch_size = drift_steps, drift_batch_size
        self.drift_prompts, self.drift_samples = {}, []
        if drift_dataset is not None:
            self._sample_start(drift_dataset, drift_max_new_tokens, seed)

    def _sample_start(self, dataset, max_new_tokens: int, seed: int) -> None:
        """The model's own answers to the held-out prompts, as it is before training (the drift's reference)."""
        tokenizer = self.trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
        self.drift_prompts = {e.index: prompt_ids(e.prompt, tokenizer) for e in load_examples(dataset).examples}
        log = MemoryLog()
        with self._eval_mode() as model:
            sample_base(model, tokenizer, self.drift_prompts, samples=1, max_new_tokens=max_new_tokens, seed=seed,
                        batch_size=self.drift_batch_size, log=log)
        self.drift_samples = log.merged()

    @contextlib.contextmanager
    def _eval_mode(self):
        """The unwrapped model in eval mode under no_grad, back in its mode after."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield model
        finally:
            model.train(training)

    def on_step_end(self, args, state, control, **kwargs):
        metrics = {}
        if self.probe is not None and control.should_log:
            phi_sum, tokens, on_policy, examples = (t.item() for t in self.probe_totals())
            metrics.update({"phi/probe_mean": phi_sum / max(tokens, 1),
                            "phi/probe_on_policy_share": on_policy / max(examples, 1)})
        if self.drift_samples and (control.should_log if self.drift_steps is None
                                   else state.global_step % self.drift_steps == 0):
            with self._eval_mode() as model:
                drift = drift_of(model, self.drift_samples, self.drift_prompts, batch_size=self.drift_batch_size)
            metrics.update({"phi/drift": drift["drift"], "phi/drift_sem": drift["drift_sem"]})
        if not metrics:
            return
        store = getattr(self.trainer, "_metrics", None)  # TRL's trainers average these into the next log
        if store is not None:
            for key, value in metrics.items():
                store["train"][key].append(value)
        else:
            self.trainer.log(metrics)

    def probe_totals(self) -> tuple[torch.Tensor, ...]:
        """phi_metrics of the probe batch under the model as it is now (eval mode, then back)."""
        with self._eval_mode() as model:
            device = next(model.parameters()).device
            batch = {k: v.to(device) for k, v in self.probe.items() if isinstance(v, torch.Tensor)}
            # as opsft's step: from the logits while they fit the device's budget (faster on a CPU), else fused
            budget = lm_head.logits_memory_budget(self.logits_memory_mb, device)
            if lm_head.fits(batch["input_ids"], model.config.vocab_size, budget):
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
                outputs = lm_head.from_logits(logits, batch["labels"])
            else:
                outputs = model(**batch, use_cache=False, fused_lm_head=True)
            return phi_metrics(outputs.log_probs, outputs.entropy, outputs.label_mask)
