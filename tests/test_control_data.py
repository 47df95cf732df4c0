"""control/data.py: the same episodes from a D4RL hdf5 file, an npz and a Minari dataset; bad files, one line."""

from __future__ import annotations

import numpy as np
import pytest

from opsft.control.data import D4RL_REFERENCE_SCORES, episodes_from_transitions, load_episodes, reference_scores
from opsft.runtime.errors import OpsftError

LENGTHS = [3, 2, 4]  # three episodes, then 2 transitions that never end


def stream(nan_in_second: bool = False) -> dict[str, np.ndarray]:
    """A D4RL-layout stream: episode 1 ends on a terminal, 2 and 3 on timeouts, then an unfinished tail."""
    rng = np.random.default_rng(0)
    n = sum(LENGTHS) + 2
    arrays = {"observations": rng.normal(size=(n, 4)).astype(np.float32),  # InvertedPendulum's shapes
              "actions": rng.uniform(-1, 1, size=(n, 1)).astype(np.float32),
              "rewards": rng.normal(size=n).astype(np.float32),
              "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}
    ends = np.cumsum(LENGTHS) - 1
    arrays["terminals"][ends[0]] = True
    arrays["timeouts"][ends[1:]] = True
    if nan_in_second:
        arrays["actions"][LENGTHS[0], 0] = np.nan
    return arrays


def write_hdf5(path, arrays):
    import h5py

    with h5py.File(path, "w") as f:
        for name, values in arrays.items():
            f[name] = values


def test_d4rl_layout_splits_at_terminals_and_timeouts(tmp_path):
    arrays = stream()
    write_hdf5(tmp_path / "hopper-medium-v2.hdf5", arrays)
    episodes = load_episodes(str(tmp_path / "hopper-medium-v2.hdf5"))
    assert list(episodes.lengths) == LENGTHS and episodes.skipped == {"unfinished_trailing_transitions": 2}
    starts = np.cumsum([0] + LENGTHS[:-1])
    for i, (start, length) in enumerate(zip(starts, LENGTHS)):
        np.testing.assert_array_equal(episodes.observations[i], arrays["observations"][start:start + length])
        np.testing.assert_array_equal(episodes.actions[i], arrays["actions"][start:start + length])
        assert episodes.returns[i] == pytest.approx(arrays["rewards"][start:start + length].sum(dtype=np.float64))
    # the task from the file name: D4RL's reference returns, 0 = random, 100 = expert
    assert episodes.reference_scores == D4RL_REFERENCE_SCORES["hopper"]
    random, expert = D4RL_REFERENCE_SCORES["hopper"]
    assert episodes.normalised_scores([random, expert]).tolist() == pytest.approx([0.0, 100.0])


def test_hdf5_npz_and_minari_give_the_same_episodes(tmp_path, monkeypatch):
    import minari
    from minari.data_collector import EpisodeBuffer

    arrays = stream()
    write_hdf5(tmp_path / "data.hdf5", arrays)
    np.savez(tmp_path / "data.npz", **arrays)
    from_hdf5 = load_episodes(str(tmp_path / "data.hdf5"), env_id="Walker2d-v5")
    from_npz = load_episodes(str(tmp_path / "data.npz"), env_id="Walker2d-v5")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    buffers = []
    for o, a, r, ended in zip(from_hdf5.observations, from_hdf5.actions, from_hdf5.rewards, from_hdf5.terminated):
        final = np.zeros((1, o.shape[1]), np.float32)  # Minari keeps T + 1 observations
        buffers.append(EpisodeBuffer(observations=list(np.concatenate([o, final])), actions=list(a),
                                     rewards=list(r), terminations=[False] * (len(r) - 1) + [ended],
                                     truncations=[False] * (len(r) - 1) + [not ended]))
    minari.create_dataset_from_buffers("test/mixed-v0", buffers, env="InvertedPendulum-v5", algorithm_name="test",
                                       ref_min_score=-1.0, ref_max_score=5.0, description="opsft test")
    from_minari = load_episodes("minari:test/mixed-v0")
    assert from_minari.env_id == "InvertedPendulum-v5"
    for other in (from_npz, from_minari):
        assert len(other) == len(from_hdf5)
        for name in ("observations", "actions", "rewards"):
            for mine, theirs in zip(getattr(from_hdf5, name), getattr(other, name)):
                np.testing.assert_array_equal(mine, theirs)
    assert from_hdf5.terminated == from_npz.terminated == from_minari.terminated == [True, False, False]
    again = episodes_from_transitions(from_hdf5.transitions(), "again")  # the stream back, without its tail
    assert again.terminated == from_hdf5.terminated and not again.skipped
    for name in ("observations", "actions", "rewards"):
        for mine, theirs in zip(getattr(from_hdf5, name), getattr(again, name)):
            np.testing.assert_array_equal(mine, theirs)
    assert from_npz.reference_scores == D4RL_REFERENCE_SCORES["walker2d"]
    assert from_minari.reference_scores == (-1.0, 5.0)  # from the dataset's metadata
    with pytest.raises(OpsftError, match="not in the local Minari store.*does not download"):
        load_episodes("minari:test/absent-v0")


def test_nothing_is_dropped_silently_and_bad_files_get_one_line(tmp_path):
    write_hdf5(tmp_path / "nan.hdf5", stream(nan_in_second=True))
    episodes = load_episodes(str(tmp_path / "nan.hdf5"))
    assert list(episodes.lengths) == [LENGTHS[0], LENGTHS[2]]
    assert episodes.skipped == {"episodes_with_non_finite_values": 1, "unfinished_trailing_transitions": 2}
    arrays = stream()
    del arrays["rewards"]
    write_hdf5(tmp_path / "missing.hdf5", arrays)
    (tmp_path / "garbage.hdf5").write_text("not HDF5")
    short = stream()
    short["actions"] = short["actions"][:-1]
    np.savez(tmp_path / "short.npz", **short)
    for file, message in (("missing.hdf5", "not in D4RL layout: missing rewards"),
                          ("garbage.hdf5", "not a readable HDF5 file"),
                          ("short.npz", "field 'actions' has 10 rows, 'observations' has 11"),
                          ("absent.npz", "no such file"), ("data.csv", "no such file")):
        with pytest.raises(OpsftError, match=message) as error:
            load_episodes(str(tmp_path / file))
        assert "\n" not in str(error.value) and file in str(error.value)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(OpsftError, match="unknown format '.csv'"):
        load_episodes(str(tmp_path / "data.csv"))
    never_ends = stream()
    never_ends["terminals"][:] = never_ends["timeouts"][:] = False
    np.savez(tmp_path / "never.npz", **never_ends)
    with pytest.raises(OpsftError, match="no complete episode"):
        load_episodes(str(tmp_path / "never.npz"))


def test_reference_scores_and_selection_with_duplicates():
    assert reference_scores("halfcheetah-medium-replay-v2") == D4RL_REFERENCE_SCORES["halfcheetah"]
    assert reference_scores("HalfCheetah-v5") == D4RL_REFERENCE_SCORES["halfcheetah"]
    assert reference_scores("InvertedPendulum-v5") is None
    from opsft.control.data import episodes_from_transitions

    episodes = episodes_from_transitions(stream(), "s")
    chosen = episodes.select([2, 0, 2])
    assert list(chosen.lengths) == [4, 3, 4] and chosen.returns[0] == chosen.returns[2] == episodes.returns[2]
    obs, act, mask = episodes.padded([1, 2])
    assert obs.shape == (2, 4, 4) and act.shape == (2, 4, 1) and mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert float(obs[0, 2:].abs().sum()) == 0.0
    with pytest.raises(OpsftError, match="no reference scores"):
        episodes.normalised_scores([1.0])
