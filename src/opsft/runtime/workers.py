"""Several jobs at a time on one machine (`--workers N` of the lab, the control lab and control generate): N
spawned processes of one torch thread each, so that N of them share N cores instead of fighting over them. With
one worker the jobs run in this process, one after the other. Not for `accelerate launch` (runtime/processes.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

J = TypeVar("J")
R = TypeVar("R")


def run_each(function: Callable[[J], R], jobs: Sequence[J], workers: int) -> Iterator[R]:
    """function(job) for each job, the results in the jobs' order as they come; `function` must be a module-level
    function (a spawned process imports it)."""
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"),
                                 initializer=one_torch_thread) as pool:
            yield from pool.map(function, jobs)
    else:
        for job in jobs:
            yield function(job)


def one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)
