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

    trainer = trl.SFTTrainer(model=..., args=..., train_dataset=...)
    trainer.add_callback(PhiCallback(trainer))
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from ..methods.ddt import phi_metrics
from . import lm_head
from .sft_trainer import SFTTrainer


class PhiCallback(TrainerCallback):
    """Logs phi/... keys every logging step (module doc). `trainer`: the trainer it is added to (TRL's callback
    convention); `probe_size`: the rows scored on a trainer that is not opsft's; `logits_memory_mb`: as
    SFTConfig's (None: the device's default; 0: always TRL's fused head)."""

    def __init__(self, trainer, probe_size: int = 4, logits_memory_mb: int | None = None):
        self.trainer = trainer
        self.logits_memory_mb = logits_memory_mb
        self.probe = None
        if not isinstance(trainer, SFTTrainer):  # opsft's own step logs phi/mean and phi/on_policy_share
            rows = [trainer.train_dataset[i] for i in range(min(probe_size, len(trainer.train_dataset)))]
            self.probe = trainer.data_collator([{k: r[k] for k in ("input_ids", "labels") if k in r} for r in rows])

    def on_step_end(self, args, state, control, **kwargs):
        if self.probe is None or not control.should_log:
            return
        totals = self.probe_totals()
        phi_sum, tokens, on_policy, examples = (t.item() for t in totals)
        metrics = {"phi/probe_mean": phi_sum / max(tokens, 1),
                   "phi/probe_on_policy_share": on_policy / max(examples, 1)}
        store = getattr(self.trainer, "_metrics", None)  # TRL's trainers average these into the step's log
        if store is not None:
            for key, value in metrics.items():
                store["train"][key].append(value)
        else:
            self.trainer.log(metrics)

    @torch.no_grad()
    def probe_totals(self) -> tuple[torch.Tensor, ...]:
        """phi_metrics of the probe batch under the model as it is now (eval mode, then back)."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self.probe.items() if isinstance(v, torch.Tensor)}
        training = model.training
        model.eval()
        try:  # as opsft's step: from the logits while they fit the device's budget (faster on a CPU), else fused
            budget = lm_head.logits_memory_budget(self.logits_memory_mb, device)
            if lm_head.fits(batch["input_ids"], model.config.vocab_size, budget):
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
                outputs = lm_head.from_logits(logits, batch["labels"])
            else:
                outputs = model(**batch, use_cache=False, fused_lm_head=True)
        finally:
            model.train(training)
        return phi_metrics(outputs.log_probs, outputs.entropy, outputs.label_mask)
