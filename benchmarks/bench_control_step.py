"""Training steps per second of each control method against BC, in one process, with episode and sampled
batching, and the cost of torch threads for a small MLP.

    python benchmarks/bench_control_step.py [--episode-steps 2] [--sampled-steps 2000] [--rounds 3]
                                            [--threads 1 2] [--batching episode sampled]

Data: the scripted mixed-quality InvertedPendulum set (200 episodes, up to 1000 steps), curated by the authors'
percentile tiers; every method trains on those episodes; the authors' policy (MLP 256 x 3) and batch sizes (256
episodes; 256 pairs when sampled, the episode weights refreshed every 250 steps). Prints a markdown table: seconds
per step (the median over rounds, the methods interleaved) and the ratio to BC with the same batching and threads.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from opsft.control.curation import percentile_tiers
from opsft.control.data import episodes_from_transitions
from opsft.control.generate import scripted_pendulum
from opsft.control.objectives import ObjectiveConfig
from opsft.control.training import Schedule, new_policy, train

METHODS = [("bc", "sequence"), ("bc_transitions", "sequence"), ("sftq", "sequence"), ("iwsft", "sequence"),
           ("iwsft", "step"), ("iwsftq", "sequence")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episode-steps", type=int, default=2, help="timed steps with episode batching")
    parser.add_argument("--sampled-steps", type=int, default=2000,
                        help="timed steps with sampled batching (a whole stage C: 8 refreshes of the episode weights)")
    parser.add_argument("--rounds", type=int, default=3, help="timings per method (the median is shown)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batching", nargs="+", default=["episode", "sampled"], choices=["episode", "sampled"])
    args = parser.parse_args()
    arrays, _ = scripted_pendulum(200, seed=0)
    episodes = episodes_from_transitions(arrays, "scripted")
    curated = percentile_tiers(episodes.returns)
    quality = np.ones(len(episodes))
    print(f"{len(episodes)} episodes, {int(episodes.lengths.sum())} steps; curated {len(curated)} "
          f"(mean length {episodes.lengths[curated].mean():.0f}); torch {torch.__version__}\n")
    print("| threads | batching | method | s / step | × BC |\n|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batching in args.batching:
            steps = args.episode_steps if batching == "episode" else args.sampled_steps
            times = {m: [] for m in METHODS}
            for _ in range(args.rounds):  # the methods interleaved, round after round: drifts hit them alike
                for method, level in METHODS:
                    times[method, level].append(time_method(episodes, curated, quality, method, level, batching,
                                                            steps))
            base = statistics.median(times[METHODS[0]])
            for (method, level), measured in times.items():
                seconds = statistics.median(measured)
                name = method + ("" if level == "sequence" or method not in ("iwsft", "iwsftq") else f" ({level})")
                print(f"| {threads} | {batching} | {name} | {seconds:.4f} | {seconds / base:.2f} |", flush=True)


def time_method(episodes, curated, quality, method, level, batching, steps) -> float:
    """Seconds per step of one training run of `steps` steps (a fresh policy; after one warm-up step), its one-time
    costs included (p_ref's log-probs of the curated episodes, computed once per run)."""
    reference = new_policy(episodes, action_low=-3, action_high=3)
    policy = copy.deepcopy(reference)
    config = ObjectiveConfig(method=method, iw_level=level)
    train(policy, episodes, curated, config, Schedule(steps=1, learning_rate=4e-5, batching=batching),
          reference=reference, quality=quality)  # warm-up
    started = time.perf_counter()
    train(policy, episodes, curated, config, Schedule(steps=steps, learning_rate=4e-5, batching=batching),
          reference=reference, quality=quality)
    return (time.perf_counter() - started) / steps

if __name__ == "__main__":
    main()
