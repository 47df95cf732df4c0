"""control/generate.py: a stable-baselines3 SAC run's replay buffer and rollouts in D4RL layout, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from opsft.control import generate
from opsft.control.data import episodes_from_transitions

pytest.importorskip("stable_baselines3")


class _Killed(Exception):
    pass


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_killed_sac_run_resumes_and_its_buffer_is_the_d4rl_stream(tmp_path, monkeypatch):
    spec = {"kind": "sac-replay", "env": "InvertedPendulum-v5", "seed": 0, "steps": 300}
    save = generate._save_sac

    def save_then_die(model, workdir, finished):
        save(model, workdir, finished)
        if not finished:
            raise _Killed  # killed right after the first checkpoint

    monkeypatch.setattr(generate, "_save_sac", save_then_die)
    monkeypatch.setattr(generate, "sac_run", _with_checkpoints(generate.sac_run, every=100))
    with pytest.raises(_Killed):
        generate.generated(spec, tmp_path)
    home = tmp_path / generate.dataset_name(spec)
    checkpointed = json.loads((home / "work" / "sac_state.json").read_text())["num_timesteps"]
    assert 100 <= checkpointed < 300 and not (home / "data.npz").exists()
    monkeypatch.setattr(generate, "_save_sac", save)
    data = generate.generated(spec, tmp_path)
    arrays = dict(np.load(data))
    assert len(arrays["rewards"]) == 300  # the run's every step, once
    assert np.all(np.abs(arrays["actions"]) <= 3.0) and np.abs(arrays["actions"]).max() > 1.0  # the env's box
    episodes = episodes_from_transitions(arrays, "replay")
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    assert ends[np.searchsorted(ends, checkpointed - 1)] == checkpointed - 1  # the checkpoint was at an episode end
    assert sum(episodes.lengths) + episodes.skipped.get("unfinished_trailing_transitions", 0) == 300
    manifest = json.loads((home / "manifest.json").read_text())
    assert manifest["spec"] == spec and manifest["transitions"] == 300 and "stable-baselines3" in manifest["versions"]


def test_rollouts_do_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
    spec = {"kind": "sac-rollout", "env": "InvertedPendulum-v5", "seed": 0, "steps": 150, "episodes": 12,
            "max_episode_steps": 30}
    one = dict(np.load(generate.generated(spec, tmp_path / "one")))
    (tmp_path / "two").mkdir()
    home = tmp_path / "two" / generate.dataset_name(spec)
    (home).mkdir()
    import shutil
    shutil.copytree(tmp_path / "one" / generate.dataset_name(spec) / "work", home / "work")  # the same SAC run
    for chunk in (home / "work").glob("rollout-*.npz"):
        chunk.unlink()
    two = dict(np.load(generate.generated(spec, tmp_path / "two", workers=2)))
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    assert len(episodes_from_transitions(one, "rollouts")) == 12


def _with_checkpoints(sac_run, every):
    def run(*args, **kwargs):
        return sac_run(*args, **{**kwargs, "checkpoint_every": every})
    return run
