"""workers.run_each: N jobs at a time in spawned processes of one torch thread, results in the jobs' order."""

from __future__ import annotations

import torch

from opsft.runtime.workers import run_each


def threads_and_square(x: int) -> tuple[int, int]:
    return torch.get_num_threads(), x * x


def test_results_come_in_the_jobs_order_from_processes_of_one_thread():
    assert list(run_each(threads_and_square, [1, 2, 3], workers=2)) == [(1, 1), (1, 4), (1, 9)]
    here = torch.get_num_threads()
    assert list(run_each(threads_and_square, [1, 2, 3], workers=1)) == [(here, 1), (here, 4), (here, 9)]
