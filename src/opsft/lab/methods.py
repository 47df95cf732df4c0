"""The lab's methods: each a loss of the family (or DPO, SimPO, SDFT) and the training data it learns from. Named
ones (sft, idft_realigned, dpo, sdft, ...), any LOSS@DATA pair, and the iterative ones, LOSS_iterative@SOURCE (rounds of
`opsft iterate`, SOURCE realign, rejection or realign+rejection, a problem with nothing accepted falling back to
its reference; LOSS_iterative_skip@SOURCE leaves it out); read by the lab's stages (study.py) and its report
(report.py).
"""

from __future__ import annotations

from ..methods.losses import METHODS as FAMILY
from ..runtime.errors import OpsftError

METHODS = {  # method -> (loss, training data); any other loss@data pair works too (method_spec)
    "sft": ("sft", "raw"), "dft": ("dft", "raw"), "idft": ("idft", "raw"), "iwsft": ("iwsft", "raw"),
    "eaft": ("eaft", "raw"), "asft": ("asft", "raw"), "idft_legacy": ("idft_legacy", "raw"),
    "sft_realigned": ("sft", "realigned"), "idft_realigned": ("idft", "realigned"),
    "sft_rejection": ("sft", "rejection"), "idft_rejection": ("idft", "rejection"),
    "dpo": ("dpo", "prefs"), "simpo": ("simpo", "prefs"),
    "sdft": ("sdft", "raw"),  # on-policy self-distillation: samples its own answers, the reference as the hint
}
SOURCES = {  # training data -> where it comes from
    "raw": "the reference solutions", "realigned": "their Hinted Decoding rewrites (stage 4)",
    "rejection": "the model's own correct answers (opsft rejection)", "prefs": "preference pairs (opsft prefs)",
}
ITERATIVE_SOURCES = ("realign", "rejection", "realign+rejection")


def iterative(kind: str) -> tuple[str, str] | None:
    """(source, fallback) of an iterative method's data kind ('iterative:rejection', 'iterative-skip:realign'),
    else None."""
    prefix, _, source = kind.partition(":")
    if prefix in ("iterative", "iterative-skip") and source in ITERATIVE_SOURCES:
        return source, "skip" if prefix == "iterative-skip" else "reference"
    return None


def method_spec(name: str) -> tuple[str, str]:
    """(loss, training data) of a lab method: a name in METHODS, or LOSS@DATA, e.g. eaft@rejection, with DATA one of
    raw, realigned, rejection (the SFT family) or prefs (dpo, simpo), or LOSS_iterative@SOURCE, whose data kind
    is iterative:SOURCE (iterative-skip:SOURCE for LOSS_iterative_skip@SOURCE)."""
    if name in METHODS:
        return METHODS[name]
    loss, _, source = name.partition("@")
    for suffix, prefix in (("_iterative_skip", "iterative-skip"), ("_iterative", "iterative")):
        if loss.endswith(suffix) and loss[:-len(suffix)] in FAMILY and source in ITERATIVE_SOURCES:
            return loss[:-len(suffix)], f"{prefix}:{source}"
    if (loss in FAMILY and source in ("raw", "realigned", "rejection")) or (loss in ("dpo", "simpo")
                                                                             and source == "prefs") or (
            loss == "sdft" and source == "raw"):
        return loss, source
    raise OpsftError(f"unknown lab method {name!r}: use one of {', '.join(METHODS)}, or LOSS@DATA with a loss of "
                     f"{', '.join(FAMILY)} and DATA raw, realigned or rejection (dpo@prefs, simpo@prefs, sdft@raw), or "
                     f"LOSS_iterative@SOURCE (LOSS_iterative_skip@SOURCE) with SOURCE {', '.join(ITERATIVE_SOURCES)}")
