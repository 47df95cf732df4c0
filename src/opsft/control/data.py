"""Offline trajectories: D4RL hdf5 files, Minari datasets from the local store, npz files in D4RL layout.

A D4RL-layout dataset is a flat stream of N transitions: observations [N, d], actions [N, a], rewards [N],
terminals [N], timeouts [N]. An episode ends at a transition whose terminal or timeout is set (D4RL's
convention, and the iw-SFT authors'); its return is the undiscounted sum of its rewards. The D4RL normalised
score of a return R is 100 * (R - random) / (expert - random).

Nothing is dropped silently: an episode holding a non-finite value, and the trailing transitions after the
last episode end (an episode cut off by the end of the file), are left out and counted in `skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..runtime.errors import OpsftError

# (random, expert) returns of the D4RL locomotion tasks, from d4rl/infos.py
D4RL_REFERENCE_SCORES = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}
FIELDS = ("observations", "actions", "rewards", "terminals", "timeouts")


@dataclass
class Episodes:
    """Trajectories of one dataset, each episode its own arrays (float32): observations [T, d], actions [T, a],
    rewards [T]."""

    observations: list[np.ndarray]
    actions: list[np.ndarray]
    rewards: list[np.ndarray]
    source: str
    env_id: str | None = None
    reference_scores: tuple[float, float] | None = None  # (random, expert) returns
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> episodes (or transitions) left out
    terminated: list[bool] = field(default_factory=list)  # per episode: ended in a terminal state (not a time limit)

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode (float64)."""
        return np.array([r.sum(dtype=np.float64) for r in self.rewards])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(a) for a in self.actions])

    def normalised_scores(self, returns) -> np.ndarray:
        """100 * (R - random) / (expert - random): 0 is a random policy, 100 an expert."""
        if self.reference_scores is None:
            raise OpsftError(f"{self.source}: no reference scores (random, expert) for a normalised score; give "
                             f"the environment (--env) or use raw returns")
        low, high = self.reference_scores
        return 100 * (np.asarray(returns, dtype=np.float64) - low) / (high - low)

    def select(self, indices) -> Episodes:
        """The episodes at `indices`, in that order; an index given twice gives the episode twice."""
        indices = [int(i) for i in indices]
        return Episodes([self.observations[i] for i in indices], [self.actions[i] for i in indices],
                        [self.rewards[i] for i in indices], self.source, self.env_id, self.reference_scores,
                        dict(self.skipped), [self.terminated[i] for i in indices])

    def transitions(self) -> dict[str, np.ndarray]:
        """The episodes as one D4RL-layout stream (terminals where an episode ended in a terminal state, timeouts
        where it was cut by a time limit)."""
        ends = np.cumsum(self.lengths) - 1
        terminals, timeouts = np.zeros(ends[-1] + 1, bool), np.zeros(ends[-1] + 1, bool)
        terminals[ends[np.array(self.terminated, bool)]] = True
        timeouts[ends[~np.array(self.terminated, bool)]] = True
        return {"observations": np.concatenate(self.observations), "actions": np.concatenate(self.actions),
                "rewards": np.concatenate(self.rewards), "terminals": terminals, "timeouts": timeouts}

    def padded(self, indices=None, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Episodes (all, or at `indices`) as padded tensors: observations [E, T, d], actions [E, T, a] and the
        mask [E, T] (1 on an episode's steps, 0 on padding), T the longest episode; the episodes' dtype."""
        indices = range(len(self)) if indices is None else indices
        chosen = [int(i) for i in indices]
        longest = max(len(self.actions[i]) for i in chosen)
        obs = np.zeros((len(chosen), longest, self.observations[0].shape[1]), self.observations[0].dtype)
        act = np.zeros((len(chosen), longest, self.actions[0].shape[1]), self.actions[0].dtype)
        mask = np.zeros((len(chosen), longest), self.actions[0].dtype)
        for row, i in enumerate(chosen):
            n = len(self.actions[i])
            obs[row, :n], act[row, :n], mask[row, :n] = self.observations[i], self.actions[i], 1
        return tuple(torch.from_numpy(x).to(device) for x in (obs, act, mask))


def load_episodes(source: str, env_id: str | None = None) -> Episodes:
    """Episodes from `minari:<dataset id>` (the local Minari store; nothing is downloaded), a D4RL hdf5 file
    (.hdf5, .h5) or an npz file in D4RL layout. `env_id` (e.g. Hopper-v5) names the task for the reference
    scores where the data do not (D4RL files: else guessed from the file name, e.g. hopper-medium-v2.hdf5)."""
    if source.startswith("minari:"):
        return _minari_episodes(source.removeprefix("minari:"), env_id)
    path = Path(source)
    if not path.is_file():
        raise OpsftError(f"{source}: no such file (give a D4RL .hdf5, an .npz in D4RL layout, or minari:<id>)")
    suffix = path.suffix.lower()
    if suffix in (".hdf5", ".h5"):
        arrays = _read_hdf5(path)
    elif suffix == ".npz":
        arrays = _read_npz(path)
    else:
        raise OpsftError(f"{source}: unknown format {suffix!r} (use .hdf5/.h5 in D4RL layout, .npz, or minari:<id>)")
    return episodes_from_transitions(arrays, source, env_id, reference_scores(env_id or path.stem))


def reference_scores(name: str | None) -> tuple[float, float] | None:
    """D4RL's (random, expert) returns for a task named in `name` (Hopper-v5, hopper-medium-v2, ...), if known."""
    if not name:
        return None
    lowered = name.lower().replace("-", "").replace("_", "")
    for task, scores in D4RL_REFERENCE_SCORES.items():
        if lowered.startswith(task):
            return scores
    return None


def episodes_from_transitions(arrays: dict[str, np.ndarray], source: str, env_id: str | None = None,
                              scores: tuple[float, float] | None = None) -> Episodes:
    """Split a D4RL-layout stream at terminals | timeouts into episodes (see the module doc)."""
    observations, actions, rewards = arrays["observations"], arrays["actions"], arrays["rewards"]
    n = len(observations)
    for name in FIELDS:
        if len(arrays[name]) != n:
            raise OpsftError(f"{source}: field '{name}' has {len(arrays[name])} rows, 'observations' has {n}")
    for name, ndim in (("observations", 2), ("actions", 2), ("rewards", 1), ("terminals", 1), ("timeouts", 1)):
        if arrays[name].ndim != ndim:
            raise OpsftError(f"{source}: field '{name}' has shape {arrays[name].shape}, expected {ndim} dimension(s)")
    ends = np.flatnonzero(arrays["terminals"].astype(bool) | arrays["timeouts"].astype(bool))
    result = Episodes([], [], [], source, env_id, scores, {})
    start, terminals = 0, arrays["terminals"].astype(bool)
    for end in ends:
        _add_episode(result, observations[start:end + 1], actions[start:end + 1], rewards[start:end + 1],
                     bool(terminals[end]))
        start = end + 1
    if start < n:
        result.skipped["unfinished_trailing_transitions"] = int(n - start)
    if not result.observations:
        raise OpsftError(f"{source}: no complete episode (an episode ends where 'terminals' or 'timeouts' is set; "
                         f"left out: {result.skipped or 'nothing'})")
    return result


def _add_episode(result: Episodes, observations, actions, rewards, terminated: bool) -> None:
    """Append one episode (as float32), or count it as left out when it holds a non-finite value."""
    if not (np.isfinite(observations).all() and np.isfinite(actions).all() and np.isfinite(rewards).all()):
        reason = "episodes_with_non_finite_values"
        result.skipped[reason] = result.skipped.get(reason, 0) + 1
        return
    result.observations.append(observations.astype(np.float32))
    result.actions.append(actions.astype(np.float32))
    result.rewards.append(rewards.astype(np.float32))
    result.terminated.append(terminated)


def _read_hdf5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in FIELDS if name not in f]
            if missing == ["timeouts"]:  # early D4RL files mark only terminals
                arrays = {name: f[name][()] for name in FIELDS[:4]}
                return {**arrays, "timeouts": np.zeros(len(arrays["terminals"]), bool)}
            if missing:
                raise OpsftError(f"{path}: not in D4RL layout: missing {', '.join(missing)} (has "
                                 f"{', '.join(sorted(f.keys())) or 'nothing'})")
            return {name: f[name][()] for name in FIELDS}
    except OSError as e:
        raise OpsftError(f"{path}: not a readable HDF5 file ({e})") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [name for name in FIELDS if name not in f.files]
            if missing:
                raise OpsftError(f"{path}: not in D4RL layout: missing {', '.join(missing)} (has "
                                 f"{', '.join(sorted(f.files)) or 'nothing'})")
            return {name: f[name] for name in FIELDS}
    except (OSError, ValueError) as e:
        raise OpsftError(f"{path}: not a readable npz file ({e})") from None


def _minari_episodes(dataset_id: str, env_id: str | None) -> Episodes:
    """A Minari dataset from the local store: each episode's T + 1 observations give T (observation, action)
    pairs; an episode ends where Minari says (terminated or truncated). Reference scores from its metadata."""
    try:
        import minari
    except ImportError:
        raise OpsftError("minari:<id> needs Minari: pip install 'opsft[control]'") from None
    if dataset_id not in minari.list_local_datasets():
        raise OpsftError(f"minari:{dataset_id}: not in the local Minari store ({minari.list_local_datasets()}); "
                         f"opsft does not download: `minari download {dataset_id}` first")
    dataset = minari.load_dataset(dataset_id)
    source = f"minari:{dataset_id}"
    metadata = dataset.storage.metadata
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    env_id = env_id or (dataset.spec.env_spec.id if dataset.spec.env_spec is not None else None)
    scores = (float(low), float(high)) if low is not None and high is not None else reference_scores(env_id)
    result = Episodes([], [], [], source, env_id, scores, {})
    for episode in dataset.iterate_episodes():
        if isinstance(episode.observations, dict):
            raise OpsftError(f"{source}: dictionary observations are not supported (flatten them first)")
        o, a, r = episode.observations[:-1], episode.actions, episode.rewards
        if len(r) == 0:
            result.skipped["empty_episodes"] = result.skipped.get("empty_episodes", 0) + 1
            continue
        a = np.asarray(a)
        _add_episode(result, np.asarray(o).reshape(len(a), -1), a[:, None] if a.ndim == 1 else a, np.asarray(r),
                     bool(np.asarray(episode.terminations)[-1]))
    if not result.observations:
        raise OpsftError(f"{source}: no episode")
    return result
