"""The processes of `accelerate launch`. Every opsft job runs the same code in each of them; these helpers let
the main process decide or do a thing once and hand every process its result. In one process they are no-ops.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from .errors import OpsftError

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
    """work() on the main process only (writing files, small bookkeeping); its result on every process, once done.

    If work() raises an OpsftError (bad input, a refused directory), every process raises it, so each stops with the
    same one-line error instead of waiting for, or losing, the main process. Any other exception is a bug: the main
    process raises it, and the others an OpsftError that points to the main process's report.
    """
    outcome = None
    if is_main_process():
        try:
            outcome = ("done", work())
        except Exception as error:
            main_result(("failed", _portable(error)))
            raise
    kind, value = main_result(outcome)
    if kind == "failed":
        raise value
    return value


def _portable(error: Exception) -> OpsftError:
    """The error to raise on the other processes: an OpsftError as it is where it pickles, else its message."""
    import pickle

    if not isinstance(error, OpsftError):
        return OpsftError(f"the main process failed ({type(error).__name__}); its error is above")
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:  # e.g. DataError, whose keyword arguments pickle does not keep
        return OpsftError(str(error))


def end_process_group() -> None:
    """Destroy the process group this process joined under `accelerate launch`, if any; every command ends with it.

    Left to interpreter exit, it aborted the process now and then (`terminate called without an active exception`,
    SIGABRT): a gloo worker thread still releasing the last collective's tensors needs the GIL to drop their Python
    objects, and once the interpreter is finalizing, taking the GIL ends that thread inside a C++ destructor, which
    std::terminate()s. Destroying the group joins those threads while the interpreter still runs.
    """
    distributed = sys.modules.get("torch.distributed")  # never imported: no group to end
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()
