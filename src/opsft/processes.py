"""The processes of `accelerate launch`. Every opsft job runs the same code in each of them; these helpers let
the main process decide or do a thing once and hand every process its result. In one process they are no-ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def state():
    """accelerate's PartialState: this process's rank among the launched ones (gloo when there is no GPU)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return state().is_main_process


def main_result(value: T) -> T:
    """The main process's `value`, on every process. A barrier: the others wait until the main one gets here."""
    if state().num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def on_main(work: Callable[[], T]) -> T:
    """work() on the main process only (writing files, small bookkeeping); its result on every process, once done."""
    return main_result(work() if is_main_process() else None)
