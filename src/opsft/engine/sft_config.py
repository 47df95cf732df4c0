"""`opsft.SFTConfig`: TRL's SFTConfig, whose `loss_type` also takes every loss of opsft's family.

    SFTConfig(output_dir="out", loss_type="idft", idft_beta=1.0)

`loss_type`: TRL's own values ("nll", the same as "sft") or any loss of methods/losses.py (sft, dft, idft,
idft_legacy, iwsft, sftq, eaft, asft, asft_token; TRL's "dft" is the family's dft). Each loss's hyperparameters are
fields here with the names and defaults of `opsft train`'s flags (LossConfig), and are checked as the command checks
them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import trl

from ..methods.losses import METHODS, LossConfig

LOSS_TYPES = ("nll", *METHODS)  # "nll" is TRL's name for plain SFT
LOSS_HYPERPARAMETERS = tuple(f.name for f in dataclasses.fields(LossConfig) if f.name != "loss")


def _loss_hyperparameters():
    """LossConfig's fields but `loss`, as a dataclass of plain fields: the same names, defaults and help."""
    return dataclasses.make_dataclass("LossHyperparameters", [
        (f.name, f.type, field(default=f.default, metadata={"help": f.metadata.get("help")}))
        for f in dataclasses.fields(LossConfig) if f.name in LOSS_HYPERPARAMETERS])


@dataclass
class SFTConfig(trl.SFTConfig, _loss_hyperparameters()):
    loss_type: str = field(default="nll", metadata={
        "help": "the loss: TRL's nll (= sft), or one of opsft's family: " + ", ".join(METHODS), "choices": LOSS_TYPES})
    quality_column: str = field(default="quality", metadata={
        "help": "SFT(Q): the dataset column holding each example's quality score (>= 0)"})
    logits_memory_mb: int | None = field(default=None, metadata={
        "help": "the step takes log p and H from the model's full logits while batch x length x vocabulary x 4 bytes "
                "fit in this many MiB, else from TRL's fused LM head (default: 1024 on a CPU, 0 on CUDA)"})

    def __post_init__(self):
        super().__post_init__()  # TRL's: "chunked_nll" becomes "nll"
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
        self.loss_config()  # the hyperparameters' ranges and rules, checked now

    def loss_config(self) -> LossConfig:
        """The family's LossConfig for this loss_type and these hyperparameters."""
        return LossConfig(loss="sft" if self.loss_type == "nll" else self.loss_type,
                          **{name: getattr(self, name) for name in LOSS_HYPERPARAMETERS})
