"""Training steps per second of each control method against BC, in one process, with episode and sampled
batching, and the cost of torch threads for a small MLP.

    python benchmarks/bench_control_step.py [--episode-steps 2] [--sampled-steps 500] [--threads 1 2]
                                            [--batching episode sampled]

Data: the scripted mixed-quality InvertedPendulum set (200 episodes, up to 1000 steps), curated by the authors'
percentile tiers; every method trains on those episodes; the authors' policy (MLP 256 x 3) and batch sizes (256
episodes; 256 pairs when sampled, the episode weights refreshed every 250 steps). Prints a markdown table: seconds
per step and the ratio to BC with the same batching and threads.
"""

from __future__ import annotations

import argparse
import copy
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
    parser.add_argument("--sampled-steps", type=int, default=500,
                        help="timed steps with sampled batching (2 refreshes of the episode weights)")
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
            base = None
            for method, level in METHODS:
                reference = new_policy(episodes, action_low=-3, action_high=3)
                policy = copy.deepcopy(reference)
                chosen = curated  # every method on the same episodes (BC on them is filtered BC)
                steps = args.episode_steps if batching == "episode" else args.sampled_steps
                schedule = Schedule(steps=steps, learning_rate=4e-5, batching=batching)
                config = ObjectiveConfig(method=method, iw_level=level)
                train(policy, episodes, chosen, config, Schedule(steps=1, learning_rate=4e-5, batching=batching),
                      reference=reference, quality=quality)  # warm-up
                started = time.perf_counter()
                train(policy, episodes, chosen, config, schedule, reference=reference, quality=quality)
                seconds = (time.perf_counter() - started) / steps
                base = base or seconds
                name = method + ("" if level == "sequence" or not config.importance_weighted else f" ({level})")
                print(f"| {threads} | {batching} | {name} | {seconds:.4f} | {seconds / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
