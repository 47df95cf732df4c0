"""The training step's per-token statistics: log p_t(y_t), H(p_t) and whether y_t is p_t's first argmax.

Two ways to get them from the same model, equal up to float round-off (tests/test_lm_head.py):

- **fused**: TRL's fused LM head (`model(..., fused_lm_head=True)`), which projects in [4096 x 32768]
  tiles and never holds the [B, L, V] logits. On CUDA it folds the tiles in Triton; elsewhere in torch
  ops, and its backward projects every tile again.
- **logits**: the model's own forward gives the logits, then p_t = softmax(z_t) in fp32, as a plain
  transformers step does. On a CPU SmolLM2's whole step is then 1.4x faster (docs/benchmarks.md),
  at the cost of the logits and their log-softmax: B * L * V * 4 bytes each.

The trainer takes the logits way for a micro-batch when B * L * V * 4 bytes fit `logits_memory_mb`, and
the fused head otherwise. The default budget is 1024 MiB where the fused head has no Triton kernel (a CPU)
and 0 on CUDA and XPU, so there the fused head always runs. The entropy carries no gradient on the logits
way: every loss of the family uses it under a stop-gradient (methods/losses.py).

ASFT's anchor needs more than per-token statistics: the whole next-token distributions of the model and of its
reference. `last_hidden_states` records the backbone's output during the step's own forward (either way), and
`output_head` gives the LM head's weight and bias, from which methods/vocab_kl.py tiles the KL.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor

DEFAULT_LOGITS_MEMORY_MB = 1024  # where the fused head folds its tiles in torch ops
TRITON_DEVICES = ("cuda", "xpu")  # where TRL's fused head has its Triton kernel


@dataclass
class TokenStatistics:
    """Per position t of [B, L - 1] (the token y_t = input_ids[:, t + 1]); 0 / False where label_mask is False."""

    log_probs: torch.Tensor  # log p_t(y_t), nats, differentiable
    entropy: torch.Tensor  # H(p_t), nats, no gradient
    is_top1: torch.Tensor  # y_t is the first argmax of p_t
    label_mask: torch.Tensor  # the completion tokens (labels != -100)


def logits_memory_budget(budget_mb: int | None, device: torch.device) -> int:
    """Bytes of fp32 logits the logits way may hold: budget_mb MiB, or the device's default when None."""
    if budget_mb is None:
        budget_mb = 0 if device.type in TRITON_DEVICES else DEFAULT_LOGITS_MEMORY_MB
    return budget_mb * 2 ** 20


def fits(input_ids: torch.Tensor, vocab_size: int, budget_bytes: int) -> bool:
    """Whether a micro-batch's fp32 logits, B * L * V * 4 bytes, fit the budget."""
    return input_ids.numel() * vocab_size * 4 <= budget_bytes


def from_logits(logits: torch.Tensor, labels: torch.Tensor) -> TokenStatistics:
    """The statistics from the model's logits [B, L, V] and labels [B, L] (-100: not scored), shifted by one:
    position t scores labels[:, t + 1] under softmax(logits[:, t]), computed in fp32.

        log p_t(y_t) = z_t[y_t] - logsumexp(z_t),    H(p_t) = -sum_v p_t(v) log p_t(v)
    """
    labels = labels[:, 1:]
    mask = labels != -100
    log_p = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels.clamp(min=0).unsqueeze(-1)
    log_probs = log_p.gather(-1, targets).squeeze(-1).masked_fill(~mask, 0.0)
    with torch.no_grad():
        log_p = log_p.detach()
        entropy = -torch.linalg.vecdot(log_p.exp(), log_p).masked_fill(~mask, 0.0)
        is_top1 = (log_p.argmax(dim=-1) == labels) & mask
    return TokenStatistics(log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask)


def transformers_model(model):
    """The transformers model itself: inside a PEFT wrapper, the model the adapters were put into."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model):
    """The model without its LM head (transformers' `base_model`: e.g. LlamaForCausalLM.model)."""
    return transformers_model(model).base_model


@contextmanager
def last_hidden_states(model):
    """Within the block, each forward of `model` (unwrapped from DDP) appends its backbone's last hidden state
    [B, L, d], with its gradient, to the yielded list: what the LM head projects, after the final norm."""
    captured = []
    handle = backbone(model).register_forward_hook(lambda module, args, output: captured.append(
        output.last_hidden_state))
    try:
        yield captured
    finally:
        handle.remove()


SCALED_HEAD_FIELDS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                      "logits_scaling")


def output_head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight [V, d] and bias [V] (or None): z = h W^T + b. Refused (ValueError) for a model that
    scales or caps its logits. (An adapter on lm_head is refused by TRL itself.)"""
    inner = transformers_model(model)
    head = inner.get_output_embeddings()
    config = inner.config.get_text_config()
    scaled = [name for name in SCALED_HEAD_FIELDS if getattr(config, name, None) not in (None, 1, 1.0)]
    if scaled:
        raise ValueError(f"the model scales or caps its logits ({', '.join(scaled)}): the full-vocabulary KL "
                         f"supports plain heads, z = h W^T + b")
    weight, bias = head.weight, head.bias
    if isinstance(weight, DTensor):  # FSDP2 shards the head: gather it, as TRL's fused head does
        weight, bias = weight.full_tensor(), None if bias is None else bias.full_tensor()
    return weight, bias
