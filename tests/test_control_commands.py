"""control/commands.py through the command line: generate (cached, with its manifest), train (resumable; other
settings refused), eval, score (DDT of the data under a policy, all and curated) and the d3rlpy baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from opsft.cli import main
from opsft.control.data import load_episodes
from opsft.control.policy import load_policy

TINY = ["--hidden", "16", "16", "--reference-steps", "30", "--steps", "20", "--warmup-steps", "5",
        "--batch-pairs", "32", "--eval-episodes", "2", "--max-episode-steps", "50", "--no-progress"]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """A scripted InvertedPendulum set made by `opsft control generate` (20 episodes of at most 50 steps)."""
    cache = tmp_path_factory.mktemp("cache")
    args = ["control", "generate", "--episodes", "20", "--max-episode-steps", "50", "--cache", str(cache),
            "--no-progress"]
    assert main(args) == 0
    (home,) = [p for p in cache.iterdir() if p.is_dir()]
    return home / "data.npz"


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_generate_keeps_a_manifest_and_reuses_the_data(scripted, capsys):
    manifest = json.loads((scripted.parent / "manifest.json").read_text())
    assert manifest["spec"] == {"kind": "scripted-pendulum", "env": "InvertedPendulum-v5", "seed": 0,
                                "episodes": 20, "max_episode_steps": 50}
    assert manifest["episodes"] == 20 and set(manifest["versions"]) >= {"gymnasium", "mujoco"}
    episodes = load_episodes(str(scripted))
    assert manifest["returns"]["mean"] == pytest.approx(float(episodes.returns.mean()))
    made = scripted.stat().st_mtime_ns
    assert main(["control", "generate", "--episodes", "20", "--max-episode-steps", "50", "--cache",
                 str(scripted.parent.parent), "--no-progress"]) == 0
    assert scripted.stat().st_mtime_ns == made and str(scripted) in capsys.readouterr().out


def test_train_writes_a_policy_resumes_and_refuses_other_settings(scripted, tmp_path, capsys):
    out = tmp_path / "iwsft"
    args = ["control", "train", "--data", str(scripted), "--env", "InvertedPendulum-v5", "--out", str(out), *TINY]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "iwsft" and summary["episodes"] == 20
    assert summary["trained_on"]["episodes"] > summary["trained_on"]["distinct"]  # tiers duplicate the best
    assert len(summary["eval"]["returns"]) == 2
    policy, meta = load_policy(out / "policy.pt")
    reference, _ = load_policy(out / "reference.pt")
    assert meta == {"env": "InvertedPendulum-v5", "method": "iwsft"}
    assert policy.shape["action_low"] == [-3.0] and policy.shape["hidden"] == (16, 16)  # the env's action box
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), reference.parameters()))
    assert main(args) == 0  # a rerun resumes: nothing left to train, the same policy
    for a, b in zip(load_policy(out / "policy.pt")[0].parameters(), policy.parameters()):
        assert torch.equal(a, b)
    capsys.readouterr()
    assert main([*args, "--steps", "21"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err


def test_bc_is_stage_a_and_a_reference_is_reused(scripted, tmp_path):
    bc = tmp_path / "bc"
    common = ["--data", str(scripted), "--env", "InvertedPendulum-v5", *TINY]
    assert main(["control", "train", "--method", "bc", "--out", str(bc), *common]) == 0
    reference, _ = load_policy(bc / "reference.pt")
    policy, _ = load_policy(bc / "policy.pt")
    for a, b in zip(reference.parameters(), policy.parameters()):
        assert torch.equal(a, b)
    sftq = tmp_path / "sftq"
    assert main(["control", "train", "--method", "sftq", "--reference", str(bc / "reference.pt"), "--out",
                 str(sftq), *common]) == 0
    assert not (sftq / "reference.pt").exists()  # started from, and weighed against, the given one


def test_eval_and_score(scripted, tmp_path, capsys):
    run = tmp_path / "bc"
    assert main(["control", "train", "--method", "bc", "--data", str(scripted), "--env", "InvertedPendulum-v5",
                 "--out", str(run), *TINY]) == 0
    assert main(["control", "eval", "--policy", str(run / "policy.pt"), "--env", "InvertedPendulum-v5",
                 "--episodes", "3", "--max-episode-steps", "40", "--out", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert len(result["returns"]) == 3 and all(0 < r <= 40 for r in result["returns"])
    assert main(["control", "score", "--policy", str(run / "reference.pt"), "--data", str(scripted),
                 "--out", str(tmp_path / "score"), "--no-progress"]) == 0
    score = json.loads((tmp_path / "score" / "summary.json").read_text())
    episodes = load_episodes(str(scripted))
    policy, _ = load_policy(run / "reference.pt")
    with torch.no_grad():  # the slow, obvious way: float64, step by step
        phi = [float(policy.phi(torch.from_numpy(o[t]), torch.from_numpy(a[t])))
               for o, a in zip(episodes.observations, episodes.actions) for t in range(len(a))]
    assert score["all"]["steps"] == len(phi) and score["all"]["phi_mean"] == pytest.approx(np.mean(phi), abs=1e-5)
    assert score["curated"]["episodes"] > score["curated"]["episodes"] // 2 > 0
    assert (tmp_path / "score" / "phi_hist.png").stat().st_size > 0
    (tmp_path / "broken.pt").write_bytes(b"not a policy")
    capsys.readouterr()
    assert main(["control", "eval", "--policy", str(tmp_path / "broken.pt"), "--env", "InvertedPendulum-v5",
                 "--out", str(tmp_path / "eval2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not a policy saved by opsft control" in err and len(err.strip().splitlines()) == 1


def test_a_d3rlpy_baseline_trains_resumes_and_is_evaluated_the_same_way(scripted, tmp_path):
    pytest.importorskip("d3rlpy")
    out = tmp_path / "td3bc"
    args = ["control", "baseline", "--algorithm", "td3_plus_bc", "--data", str(scripted), "--env",
            "InvertedPendulum-v5", "--steps", "20", "--checkpoint-every", "10", "--eval-episodes", "2",
            "--max-episode-steps", "50", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    state = json.loads((out / "algorithm_state.json").read_text())
    assert state["steps"] == 20 and state["seconds"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "td3_plus_bc" and len(summary["eval"]["returns"]) == 2
    assert main(["control", "eval", "--policy", str(out / "algorithm.d3"), "--env", "InvertedPendulum-v5",
                 "--episodes", "2", "--max-episode-steps", "50", "--seed", "1000000", "--out",
                 str(tmp_path / "eval"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert again["returns"] == summary["eval"]["returns"]  # the saved algorithm acts as the trained one
