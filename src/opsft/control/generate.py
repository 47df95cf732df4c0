"""Datasets made here (D4RL is not reachable offline), in D4RL layout, cached with a manifest.

Scripted mixed-quality InvertedPendulum (seconds; for CI and the docs): each episode acts with
a = clip(s * K . o + sigma * eps, -3, 3), K = (1, 20, 2, 2) a linear controller that balances the pole, s drawn
uniformly from [-1, 1] per episode (the episode's skill: s >= 0.3 balances, s <= 0 falls within ~20 steps),
sigma = 0.3, eps ~ N(0, 1). Across episodes the mean skill is 0, so cloning every episode alike learns a
controller that does nothing useful, while the high-return episodes are the skilled ones: curation has
something to find.

From a soft actor-critic run (stable-baselines3's SAC at its defaults, one environment, seeded):
    sac-replay   the replay buffer of the whole run, in collection order (like D4RL's medium-replay)
    sac-rollout  episodes of the run's final policy, actions sampled (like D4RL's medium when the run is
                 stopped part-way)

`generated(spec)` makes one of these once and keeps it in $OPSFT_CACHE/control/<name>/: data.npz (D4RL layout)
and manifest.json (the spec, gymnasium / mujoco / stable-baselines3 versions, transitions, episodes, the return
summary, seconds). Generation resumes after a kill: the SAC run from its last checkpoint, rollouts by chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from ..runtime.errors import OpsftError
from ..runtime.workers import run_each

CONTROLLER = np.array([1.0, 20.0, 2.0, 2.0])


def scripted_pendulum(episodes: int = 200, seed: int = 0, max_episode_steps: int = 1000,
                      noise: float = 0.3) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """D4RL-layout arrays of `episodes` InvertedPendulum-v5 episodes, and each episode's skill s."""
    import gymnasium as gym

    env = gym.make("InvertedPendulum-v5", max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(seed)
    skills = rng.uniform(-1, 1, size=episodes)

    def act(episode: int, observation: np.ndarray) -> np.ndarray:
        return np.array([np.clip(skills[episode] * CONTROLLER @ observation + noise * rng.normal(), -3, 3)],
                        np.float32)

    arrays = record_episodes(env, act, [seed * 100_003 + i for i in range(episodes)])
    return arrays, skills


def record_episodes(env, act, reset_seeds) -> dict[str, np.ndarray]:
    """One episode per reset seed, acting with act(episode index, observation) -> action, in D4RL layout
    (observations, actions, rewards as float32; terminals; timeouts where a time limit, not a terminal, ended it).
    Closes the environment."""
    columns = {name: [] for name in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for i, reset_seed in enumerate(reset_seeds):
        observation, _ = env.reset(seed=reset_seed)
        done = False
        while not done:
            action = act(i, observation)
            next_observation, reward, terminated, truncated, _ = env.step(action)
            for name, value in (("observations", observation), ("actions", action), ("rewards", reward),
                                ("terminals", terminated), ("timeouts", truncated and not terminated)):
                columns[name].append(value)
            observation, done = next_observation, terminated or truncated
    env.close()
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    for name in ("observations", "actions", "rewards"):
        arrays[name] = arrays[name].astype(np.float32)
    return arrays


# ---- datasets from a soft actor-critic run (stable-baselines3) ----------------------------------------------------

def sac_run(env_id: str, steps: int, seed: int, workdir: Path, *, checkpoint_every: int = 5_000,
            progress: bool = False, max_episode_steps: int | None = None):
    """Train stable-baselines3's SAC (its defaults; one environment) for `steps` environment steps, the replay
    buffer holding the whole run. Resumable: every `checkpoint_every` steps, at the next episode end, the model
    and its buffer are saved in `workdir`; a rerun continues from there (a new episode starts at the resume, so
    an interrupted run equals an uninterrupted one in distribution, not bit for bit). Returns the model."""
    try:
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError:
        raise OpsftError("SAC datasets need stable-baselines3: pip install 'opsft[control-baselines]'") from None
    import gymnasium as gym

    workdir.mkdir(parents=True, exist_ok=True)
    saved, state_file = workdir / "sac.zip", workdir / "sac_state.json"
    env = gym.make(env_id, **({"max_episode_steps": max_episode_steps} if max_episode_steps else {}))
    if state_file.exists():
        model = SAC.load(saved, env=env, device="cpu")
        model.load_replay_buffer(workdir / "sac_buffer.pkl")
    else:
        model = SAC("MlpPolicy", env, seed=seed, buffer_size=steps + 1, device="cpu", verbose=0)

    class Checkpoint(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next = (model.num_timesteps // checkpoint_every + 1) * checkpoint_every

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:  # every step's transition is in the buffer by now (not in _on_step)
            buffer = model.replay_buffer
            if self.num_timesteps >= self.next and buffer.pos and bool(buffer.dones[buffer.pos - 1, 0]):
                _save_sac(model, workdir, finished=False)
                self.next = (self.num_timesteps // checkpoint_every + 1) * checkpoint_every

    remaining = steps - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, reset_num_timesteps=False, callback=Checkpoint(),
                    progress_bar=progress and _has_rich())
    if not state_file.exists() or not json.loads(state_file.read_text())["finished"]:
        _save_sac(model, workdir, finished=True)
    return model


def _save_sac(model, workdir: Path, finished: bool) -> None:
    """The model, its buffer and the step count, each written whole before the state file names them."""
    model.save(workdir / "sac.tmp.zip")
    model.save_replay_buffer(workdir / "sac_buffer.tmp.pkl")
    os.replace(workdir / "sac.tmp.zip", workdir / "sac.zip")
    os.replace(workdir / "sac_buffer.tmp.pkl", workdir / "sac_buffer.pkl")
    (workdir / "sac_state.json").write_text(json.dumps({"num_timesteps": model.num_timesteps,
                                                         "finished": finished}) + "\n")


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401  (stable-baselines3's progress bar)
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def replay_arrays(model) -> dict[str, np.ndarray]:
    """The SAC run's replay buffer in D4RL layout, in the order it was collected (≈ D4RL's medium-replay). Actions
    are unscaled to the environment's box (SAC stores them in [-1, 1]); terminals = done and not a time limit,
    timeouts = a time limit; the episode running when the run stopped is cut off (counted when loaded)."""
    buffer = model.replay_buffer
    n = buffer.pos
    if buffer.full:
        raise OpsftError("the SAC replay buffer wrapped around: it holds only the latest steps (give a buffer as "
                         "large as the run)")
    dones, timeouts = buffer.dones[:n, 0].astype(bool), buffer.timeouts[:n, 0].astype(bool)
    return {"observations": buffer.observations[:n, 0].astype(np.float32),
            "actions": model.policy.unscale_action(buffer.actions[:n, 0]).astype(np.float32),
            "rewards": buffer.rewards[:n, 0].astype(np.float32), "terminals": dones & ~timeouts,
            "timeouts": timeouts}


def policy_rollouts(model, env_id: str, episodes: int, seed: int, deterministic: bool = False,
                    max_episode_steps: int | None = None) -> dict[str, np.ndarray]:
    """`episodes` episodes of the SAC policy (sampled actions by default, as D4RL's medium sets) in D4RL layout;
    episode i starts from env.reset(seed=seed + i)."""
    import gymnasium as gym

    env = gym.make(env_id, **({"max_episode_steps": max_episode_steps} if max_episode_steps else {}))
    model.set_random_seed(seed)
    return record_episodes(env, lambda _, observation: model.predict(observation, deterministic=deterministic)[0],
                           [seed + i for i in range(episodes)])


# ---- the cache ----------------------------------------------------------------------------------------------------

KINDS = ("scripted-pendulum", "sac-replay", "sac-rollout")
ROLLOUT_CHUNK = 10  # rollout episodes per job: the data do not depend on the number of workers


def dataset_name(spec: dict) -> str:
    """<kind>-<env>-seed<k>-<8 hex of the whole spec>: one directory per distinct spec."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return f"{spec['kind']}-{spec['env']}-seed{spec['seed']}-{digest}"


def generated(spec: dict, cache: Path, *, workers: int = 1, progress: bool = False) -> Path:
    """The path of the dataset `spec` describes (data.npz in D4RL layout), made now if it is not in `cache` yet.
    spec: kind (KINDS), env, seed, and per kind: episodes (scripted-pendulum, sac-rollout), steps (the SAC run),
    max_episode_steps (optional)."""
    if spec.get("kind") not in KINDS:
        raise OpsftError(f"unknown dataset kind {spec.get('kind')!r}: use one of {', '.join(KINDS)}")
    home = cache / dataset_name(spec)
    data = home / "data.npz"
    if data.exists() and (home / "manifest.json").exists():
        return data
    home.mkdir(parents=True, exist_ok=True)
    started, kind, horizon = time.perf_counter(), spec["kind"], spec.get("max_episode_steps")
    if kind == "scripted-pendulum":
        if spec["env"] != "InvertedPendulum-v5":
            raise OpsftError("the scripted set is made in InvertedPendulum-v5 only")
        arrays, _ = scripted_pendulum(spec["episodes"], seed=spec["seed"], max_episode_steps=horizon or 1000)
    else:
        model = sac_run(spec["env"], spec["steps"], spec["seed"], home / "work", progress=progress,
                        max_episode_steps=horizon)
        if kind == "sac-replay":
            arrays = replay_arrays(model)
        else:
            arrays = _chunked_rollouts(home / "work", spec, workers)
    tmp = home / "data.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, data)
    (home / "manifest.json").write_text(json.dumps(
        _manifest(spec, arrays, time.perf_counter() - started), indent=2) + "\n")
    return data


def _chunked_rollouts(workdir: Path, spec: dict, workers: int) -> dict[str, np.ndarray]:
    """The rollout episodes in chunks of ROLLOUT_CHUNK (chunk c: reset seeds seed + c * ROLLOUT_CHUNK + i, action
    noise seeded by the chunk), `workers` processes at a time; each finished chunk is kept, so a rerun after a kill
    makes only the missing ones."""
    chunks = [(c, min(ROLLOUT_CHUNK, spec["episodes"] - c)) for c in range(0, spec["episodes"], ROLLOUT_CHUNK)]
    todo = [(c, n) for c, n in chunks if not (workdir / f"rollout-{c:06d}.npz").exists()]
    jobs = [(str(workdir), spec["env"], spec["seed"] + c, n, spec.get("max_episode_steps"), c) for c, n in todo]
    list(run_each(_rollout_chunk, jobs, workers))
    parts = [dict(np.load(workdir / f"rollout-{c:06d}.npz")) for c, _ in chunks]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _rollout_chunk(job) -> None:
    workdir, env_id, seed, episodes, horizon, first = job
    import torch
    from stable_baselines3 import SAC

    torch.set_num_threads(1)
    model = SAC.load(Path(workdir) / "sac.zip", device="cpu")
    arrays = policy_rollouts(model, env_id, episodes, seed, max_episode_steps=horizon)
    tmp = Path(workdir) / f"rollout-{first:06d}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, Path(workdir) / f"rollout-{first:06d}.npz")


def _manifest(spec: dict, arrays: dict[str, np.ndarray], seconds: float) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from .data import episodes_from_transitions
    from .evaluation import return_summary

    versions = {}
    for package in ("gymnasium", "mujoco", "stable-baselines3", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    episodes = episodes_from_transitions(arrays, dataset_name(spec))
    returns = episodes.returns
    return {"spec": spec, "versions": versions, "generator": f"opsft.control.generate ({spec['kind']})",
            "transitions": int(len(arrays["rewards"])), "episodes": len(episodes), "skipped": episodes.skipped,
            "returns": {**return_summary(returns), "min": float(returns.min()), "max": float(returns.max()),
                        "median": float(np.median(returns))},
            "seconds": round(seconds, 1)}
