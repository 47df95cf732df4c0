"""`opsft.SFTTrainer`: TRL's SFTTrainer whose loss is opsft's family (methods/losses.py), chosen by
`SFTConfig.loss_type` (engine/sft_config.py).

    trainer = SFTTrainer(model="path/or/id", args=SFTConfig(output_dir="out", loss_type="idft"),
                         train_dataset=dataset)   # text, prompt/completion or conversational, as TRL
    trainer.train()

TRL tokenizes (or takes pre-tokenized rows: input_ids and labels, -100 off the completion, as `opsft train` hands
them). Per-token log p(y_t), H(p_t) and top-1 hits come from TRL's fused LM head, or on a CPU from the model's
own logits while they fit a memory budget (engine/lm_head.py: the same numbers, faster there). The trainer turns
them into the family's weights and loss, keeps TRL's normaliser (`num_items_in_batch`: completion tokens of the
whole accumulated, data-parallel batch), and logs what the loss is doing and how on-policy the batches are
(phi/mean, phi/on_policy_share: engine/phi_callback.py).

iw-SFT's and asft_token's reference log-probs: a `ref_log_probs` column aligned to input_ids (what `opsft train`
precomputes), else `ref_model`: by default a frozen copy of the initial model, or with LoRA the model with its
adapter off. ASFT's full-vocabulary anchor always needs `ref_model` (the same default): its backbone's last hidden
states and LM head give p_ref at every position, and methods/vocab_kl.py tiles KL(p_ref || p_theta). SFT(Q) reads
each example's quality from the `quality_column`. Packing and padding-free are refused: sequence-level weights
(iw-SFT, SFT(Q)) need one example per row.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import torch
import trl
from datasets import Dataset
from torch.nn.utils.rnn import pad_sequence
from trl.trainer import add_fused_lm_head

from ..inputs.rendering import TokenizedExample
from ..methods.ddt import phi_metrics
from ..methods.losses import family_loss, token_weights
from ..methods.vocab_kl import vocab_kl
from . import lm_head
from .sft_config import SFTConfig

REF_COLUMN, QUALITY_COLUMN = "ref_log_probs", "quality"


def build_train_dataset(tokenized: list[TokenizedExample], *, ref_log_probs: dict[int, list[float]] | None = None,
                        quality: dict[int, float] | None = None) -> Dataset:
    """Rows of input_ids and labels (-100 on the prompt), plus the optional columns, keyed by example index."""
    rows = []
    for t in tokenized:
        start = t.completion_start
        row: dict[str, Any] = {"input_ids": t.input_ids, "labels": [-100] * start + t.input_ids[start:]}
        if ref_log_probs is not None:
            row[REF_COLUMN] = [0.0] * start + list(ref_log_probs[t.index])[: len(t.input_ids) - start]
        if quality is not None:
            row[QUALITY_COLUMN] = float(quality[t.index])
        rows.append(row)
    return Dataset.from_list(rows)


@dataclass
class FamilyCollator:
    """TRL's collator for input_ids/labels, plus the reference log-probs (right-padded like input_ids)
    and the quality scores."""

    base: Any  # trl's DataCollatorForLanguageModeling

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.base([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
        if REF_COLUMN in examples[0]:
            batch[REF_COLUMN] = pad_sequence([torch.tensor(e[REF_COLUMN], dtype=torch.float32) for e in examples],
                                             batch_first=True, padding_value=0.0)
        if QUALITY_COLUMN in examples[0]:
            batch[QUALITY_COLUMN] = torch.tensor([e[QUALITY_COLUMN] for e in examples], dtype=torch.float32)
        return batch


class SFTTrainer(trl.SFTTrainer):
    """TRL's SFTTrainer with the loss of `args.loss_type` (an opsft.SFTConfig): losses.family_loss with
    losses.token_weights. Takes what TRL's takes, plus `ref_model` for iw-SFT and the ASFTs: a model, "adapter-off",
    or None (the default: a frozen copy of the initial model, or the adapter turned off under LoRA)."""

    def __init__(self, model, args: SFTConfig | None = None, *, ref_model=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = SFTConfig(f"{name.split('/')[-1]}-SFT")
        if not isinstance(args, SFTConfig):
            raise TypeError(f"opsft.SFTTrainer takes an opsft.SFTConfig (TRL's SFTConfig with the family's loss_type), "
                            f"got {type(args).__name__}")
        if args.packing or args.padding_free:
            raise ValueError("opsft.SFTTrainer: packing and padding_free are not supported (iw-SFT's and SFT(Q)'s "
                             "weights are per example: one example per row); set both to False")
        self.loss_config = args.loss_config()
        train_dataset = kwargs.get("train_dataset")
        if self.loss_config.needs_quality and train_dataset is not None:
            kwargs["train_dataset"] = _quality_column(train_dataset, args.quality_column)
        loss_type, args.loss_type = args.loss_type, "nll"  # TRL's own check knows nll and dft only
        try:
            super().__init__(model, args, **kwargs)
        finally:
            args.loss_type = loss_type
        self.data_collator = FamilyCollator(self.data_collator)
        needs_model = self.loss_config.needs_reference_model or (
            self.loss_config.needs_reference_log_probs and REF_COLUMN not in self.train_dataset.column_names)
        if needs_model and ref_model is None:
            ref_model = "adapter-off" if _has_adapter(self.model) else _frozen_copy(self.model)
        if ref_model == "adapter-off" and not _has_adapter(self.model):
            raise ValueError('ref_model="adapter-off" needs a model with a PEFT adapter (pass peft_config)')
        if self.loss_config.needs_reference_model:
            lm_head.output_head(self.model)  # refused here, before training, where the head is not z = h W^T + b
        self.ref_model = ref_model
        self.logits_budget = lm_head.logits_memory_budget(args.logits_memory_mb, self.args.device)
        self.head_calls = {"logits": 0, "fused": 0}  # micro-batches (and reference passes) per way; train_summary
        if isinstance(ref_model, torch.nn.Module):
            add_fused_lm_head(ref_model, outputs=("log_probs",))
            self.ref_model = self.accelerator.prepare_model(ref_model.eval(), evaluation_mode=True)

    def _get_train_sampler(self, train_dataset=None):
        """SFT(Q) with quality_mode "sample": examples drawn in proportion to their quality, with replacement."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not (self.loss_config.needs_quality and self.loss_config.quality_mode == "sample"):
            return super()._get_train_sampler(train_dataset)
        weights = dataset[QUALITY_COLUMN]
        generator = torch.Generator().manual_seed(self.args.seed)
        return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                                      generator=generator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + [REF_COLUMN, QUALITY_COLUMN]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ref_log_probs, quality = inputs.pop(REF_COLUMN, None), inputs.pop(QUALITY_COLUMN, None)
        inputs["use_cache"] = False
        reference_kl = None
        if self.loss_config.needs_reference_model:
            with lm_head.last_hidden_states(self.accelerator.unwrap_model(model)) as hidden:
                outputs = self._token_statistics(model, inputs)
            reference_kl = self._reference_kl(model, inputs, hidden[-1], outputs.label_mask)
        else:
            outputs = self._token_statistics(model, inputs)
        if self.loss_config.needs_reference_log_probs:
            ref_log_probs = ref_log_probs[:, 1:] if ref_log_probs is not None else self._reference(model, inputs)
        progress = self.state.global_step / self.state.max_steps if self.state.max_steps else 0.0
        terms = token_weights(self.loss_config, outputs.log_probs, outputs.entropy, outputs.label_mask,
                              progress=progress, ref_log_probs=ref_log_probs, quality=quality,
                              vocab_size=self.accelerator.unwrap_model(model).config.vocab_size,
                              reference_kl=reference_kl)
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = family_loss(outputs.log_probs, terms, num_tokens)
        # As TRL: num_items_in_batch counts every rank's tokens, and DDP averages gradients across ranks
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._record_metrics(inputs, outputs, terms)
        return (loss, outputs) if return_outputs else loss

    def _token_statistics(self, model, inputs):
        """lm_head.TokenStatistics fields for `inputs` (input_ids, labels, ...): from the logits when they fit
        the budget, else from TRL's fused head."""
        vocab_size = self.accelerator.unwrap_model(model).config.vocab_size
        if lm_head.fits(inputs["input_ids"], vocab_size, self.logits_budget):
            self.head_calls["logits"] += 1
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            return lm_head.from_logits(logits, inputs["labels"])
        self.head_calls["fused"] += 1
        return model(**inputs, fused_lm_head=True)

    @torch.no_grad()
    def _reference(self, model, inputs) -> torch.Tensor:
        if self.ref_model == "adapter-off":
            with self.accelerator.unwrap_model(model).disable_adapter():
                return self._token_statistics(model, inputs).log_probs
        if self.ref_model is None:
            raise ValueError(f"{self.loss_config.loss} needs reference log-probs: a ref_log_probs column or a "
                             f"ref_model")
        return self._token_statistics(self.ref_model, inputs).log_probs

    def _reference_kl(self, model, inputs, hidden: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
        """KL(p_ref,t || p_theta,t) [B, L - 1] at the completion positions (0 elsewhere), differentiable in the
        policy: from its last hidden states (recorded in the step's forward) and the reference's, tiled over the
        vocabulary."""
        policy = self.accelerator.unwrap_model(model)
        adapter_off = self.ref_model == "adapter-off"
        reference = policy if adapter_off else self.accelerator.unwrap_model(self.ref_model)
        with torch.no_grad(), policy.disable_adapter() if adapter_off else contextlib.nullcontext():
            ref_hidden = lm_head.backbone(reference)(**{k: v for k, v in inputs.items() if k != "labels"})
        ref_head = lm_head.output_head(reference)  # the same head under adapter-off: it has no adapter
        kl = vocab_kl(hidden[:, :-1][label_mask], *lm_head.output_head(policy),
                      ref_hidden.last_hidden_state[:, :-1][label_mask], *ref_head)
        # masked_scatter keeps the result connected to the model even where no position is in the completion
        return kl.new_zeros(label_mask.shape).masked_scatter(label_mask, kl)

    def _record_metrics(self, inputs, outputs, terms) -> None:
        """Per step, across processes: entropy, token accuracy, tokens seen, and the method's weights."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        gather = self.accelerator.gather_for_metrics
        mask = outputs.label_mask
        n = gather(mask.sum()).sum().clamp(min=1)  # completion tokens on all processes

        def mean(values):
            return gather((values.detach().float() * mask).sum()).sum() / n

        def pooled_mean(values):  # each process may hold a different number of values: gather sums and counts
            total = gather(values.detach().float().sum()).sum()
            return (total / gather(torch.tensor(values.numel(), device=total.device)).sum().clamp(min=1)).item()

        metrics["nll"].append(mean(-outputs.log_probs).item())  # plain SFT loss, comparable across methods
        phi_sum, tokens, on_policy, examples = (gather(t).sum() for t in phi_metrics(outputs.log_probs,
                                                                                      outputs.entropy, mask))
        metrics["phi/mean"].append((phi_sum / tokens.clamp(min=1)).item())  # how on-policy the batch is (DDT)
        metrics["phi/on_policy_share"].append((on_policy / examples.clamp(min=1)).item())
        metrics["entropy"].append(mean(outputs.entropy).item())
        metrics["mean_token_accuracy"].append(mean(outputs.is_top1).item())
        weights = terms.weights.detach()
        metrics["weight/mean"].append(mean(weights).item())
        metrics["weight/min"].append(gather(weights[mask].min()).min().item())
        metrics["weight/max"].append(gather(weights[mask].max()).max().item())
        stats = terms.stats
        if "phi" in stats:
            phi_mean = mean(stats["phi"])
            metrics["idft/phi_mean"].append(phi_mean.item())
            metrics["idft/phi_std"].append((mean(stats["phi"] ** 2) - phi_mean ** 2).clamp(min=0).sqrt().item())
            metrics["idft/gamma_mean"].append(mean(stats["gamma"]).item())
            metrics["idft/lambda"].append(float(stats["lam"]))
        if "sequence_weight" in stats:
            sequence_weights = stats["sequence_weight"].detach().float()
            largest = sequence_weights.max() if sequence_weights.numel() else sequence_weights.new_tensor(float("-inf"))
            metrics["iwsft/sequence_weight_mean"].append(pooled_mean(sequence_weights))
            metrics["iwsft/sequence_weight_max"].append(gather(largest).max().item())
        if "clipped" in stats:
            metrics["iwsft/clipped_fraction"].append(pooled_mean(stats["clipped"]))
        if "k3" in stats:  # asft_token's anchor: the k3 estimate per completion token, before its weight mu
            metrics["asft/k3_mean"].append(pooled_mean(stats["k3"]))
        if "kl" in stats:  # ASFT's anchor: KL(p_ref || p_theta) per completion token, before its weight mu
            metrics["asft/kl_mean"].append(pooled_mean(stats["kl"]))
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]


def _quality_column(dataset, column: str):
    """The dataset with its quality scores in the column the trainer reads, checked to be there."""
    if column not in dataset.column_names:
        raise ValueError(f"loss_type 'sftq' reads each example's quality from column {column!r}, which the dataset "
                         f"lacks (its columns: {', '.join(dataset.column_names)}); set SFTConfig.quality_column")
    return dataset if column == QUALITY_COLUMN else dataset.rename_column(column, QUALITY_COLUMN)


def _frozen_copy(model):
    """A copy of the model as it is now. TRL's __init__ replaced the model's forward by its fused-head forward,
    which calls the original model's own forward: a plain deepcopy would keep calling the model being trained, so
    the copy gets its class's forward back."""
    reference = copy.deepcopy(model)
    vars(reference).pop("forward", None)
    return reference


def _has_adapter(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
