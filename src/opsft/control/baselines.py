"""Offline-RL baselines from d3rlpy (2.8), on the same episodes and evaluated by the same rollouts as our methods.

    bc           d3rlpy's BC (deterministic policy, mean squared error): behaviour cloning of every transition
    td3_plus_bc  TD3+BC (Fujimoto & Gu 2021), alpha 2.5
    iql          IQL (Kostrikov et al. 2021), expectile 0.7, temperature 3
    cql          CQL (Kumar et al. 2020): slow on a CPU, optional

Each at d3rlpy's defaults (its paper settings), actions scaled from the environment's box to [-1, 1]
(MinMaxActionScaler), no observation normalisation (as our policies). Training runs in chunks of
`checkpoint_every` gradient steps, the algorithm saved after each (d3rlpy's own save: networks, optimisers and
config), so a rerun continues from the last chunk; the random state is reseeded per chunk (seed + steps done),
so a resumed run equals an uninterrupted one in distribution, not bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..runtime.errors import OpsftError
from .data import Episodes

ALGORITHMS = ("bc", "td3_plus_bc", "iql", "cql")


def _d3rlpy():
    """d3rlpy, its structlog output (a line per epoch and per model built) limited to errors."""
    try:
        import d3rlpy
        import structlog
    except ImportError:
        raise OpsftError("the baselines need d3rlpy: pip install 'opsft[control-baselines]'") from None
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    return d3rlpy


def mdp_dataset(episodes: Episodes, action_low, action_high):
    """Our episodes as a d3rlpy MDPDataset (terminals and time limits as loaded)."""
    d3rlpy = _d3rlpy()
    stream = episodes.transitions()
    return d3rlpy.dataset.MDPDataset(
        stream["observations"], stream["actions"], stream["rewards"], stream["terminals"].astype(np.float32),
        timeouts=stream["timeouts"].astype(np.float32), action_space=d3rlpy.ActionSpace.CONTINUOUS)


def algorithm_config(name: str, action_low, action_high, batch_size: int | None = None):
    """d3rlpy's config for `name` at its defaults, with the action box scaled to [-1, 1]."""
    d3rlpy = _d3rlpy()
    if name not in ALGORITHMS:
        raise OpsftError(f"unknown baseline {name!r}: use one of {', '.join(ALGORITHMS)}")
    configs = {"bc": d3rlpy.algos.BCConfig, "td3_plus_bc": d3rlpy.algos.TD3PlusBCConfig,
               "iql": d3rlpy.algos.IQLConfig, "cql": d3rlpy.algos.CQLConfig}
    scaler = d3rlpy.preprocessing.MinMaxActionScaler(minimum=np.asarray(action_low, np.float32),
                                                     maximum=np.asarray(action_high, np.float32))
    return configs[name](action_scaler=scaler, **({"batch_size": batch_size} if batch_size else {}))


def train_baseline(name: str, episodes: Episodes, workdir: Path, *, steps: int, seed: int, action_low,
                   action_high, checkpoint_every: int = 2_000, batch_size: int | None = None, progress=None):
    """Train d3rlpy's `name` for `steps` gradient steps on the episodes, resumably in `workdir`; the algorithm.
    workdir/algorithm_state.json holds the steps done and the seconds they took (over every process)."""
    d3rlpy = _d3rlpy()
    workdir.mkdir(parents=True, exist_ok=True)
    saved, state_file = workdir / "algorithm.d3", workdir / "algorithm_state.json"
    dataset = mdp_dataset(episodes, action_low, action_high)
    state = json.loads(state_file.read_text()) if state_file.exists() else {"steps": 0, "seconds": 0.0}
    done = state["steps"]
    if done:
        algorithm = d3rlpy.load_learnable(str(saved), device="cpu:0")
    else:
        algorithm = algorithm_config(name, action_low, action_high, batch_size).create(device="cpu:0")
    if progress is not None:
        progress.update(done)
    while done < steps:
        clock, chunk = time.perf_counter(), min(checkpoint_every, steps - done)
        d3rlpy.seed(seed * 1_000_003 + done)
        algorithm.fit(dataset, n_steps=chunk, n_steps_per_epoch=chunk, show_progress=False, save_interval=10**9,
                      logger_adapter=d3rlpy.logging.NoopAdapterFactory())
        done += chunk
        algorithm.save(str(workdir / "algorithm.tmp.d3"))
        os.replace(workdir / "algorithm.tmp.d3", saved)
        state = {"steps": done, "seconds": round(state["seconds"] + time.perf_counter() - clock, 3)}
        state_file.write_text(json.dumps(state) + "\n")
        if progress is not None:
            progress.update(chunk)
    return algorithm


def load_baseline(path: Path):
    return _d3rlpy().load_learnable(str(path), device="cpu:0")


def baseline_actor(algorithm):
    """observation -> action of a d3rlpy algorithm (its greedy action, in the environment's box)."""
    return lambda observation: algorithm.predict(np.asarray(observation, np.float32)[None])[0]
