"""control/lab.py and lab_report.py: the tiny profile runs every method and baseline, reports them, and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from opsft.cli import main
from opsft.control.lab import METHODS


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_tiny_lab_reports_every_method_and_baseline_and_resumes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("d3rlpy")
    monkeypatch.setenv("OPSFT_CACHE", str(tmp_path / "cache"))
    args = ["control", "lab", "--profile", "tiny", "--out", str(tmp_path / "lab"), "--workers", "1", "--no-progress"]
    assert main(args) == 0
    report = tmp_path / "lab" / "report"
    results = json.loads((report / "results.json").read_text())
    names = [row["method"] for row in results["rows"]]
    assert names == [*METHODS, "bc (d3rlpy)", "td3_plus_bc (d3rlpy)", "iql (d3rlpy)"]
    assert all(len(row["return"]["per_seed"]) == 1 for row in results["rows"])
    curated = results["phi"]["curated"]
    assert results["phi"]["all"]["episodes"] == results["data"]["episodes"] and curated["episodes"] > 0
    for picture in ("scores.png", "returns.png", "phi.png", "training_curves.png", "index.html", "results.md"):
        assert (report / picture).stat().st_size > 0
    assert "| iwsft |" in (report / "results.md").read_text()
    capsys.readouterr()
    assert main(args) == 0
    assert "9 of 9 runs done earlier" in capsys.readouterr().out
    assert main([*args, "--seeds", "0", "1"]) == 2  # other settings in the same --out: refused


def test_the_lab_takes_your_data_with_its_environment(tmp_path, monkeypatch, capsys):
    """--data (here an npz in D4RL layout) replaces the embedded dataset; it needs --env."""
    import numpy as np

    from opsft.control.generate import scripted_pendulum

    arrays, _ = scripted_pendulum(16, seed=5, max_episode_steps=60)
    np.savez(tmp_path / "mine.npz", **arrays)
    monkeypatch.setenv("OPSFT_CACHE", str(tmp_path / "cache"))
    args = ["control", "lab", "--profile", "tiny", "--data", str(tmp_path / "mine.npz"), "--out", str(tmp_path / "lab"),
            "--methods", "bc", "filtered_bc", "--baselines", "bc", "--workers", "1", "--no-progress"]
    assert main(args) == 2  # no --env
    assert "--data needs --env" in capsys.readouterr().err
    assert main([*args, "--env", "InvertedPendulum-v5"]) == 0
    results = json.loads((tmp_path / "lab" / "report" / "results.json").read_text())
    assert results["data"]["source"] == str(tmp_path / "mine.npz") and results["data"]["episodes"] == 16
    assert [row["method"] for row in results["rows"]] == ["bc", "filtered_bc", "bc (d3rlpy)"]
    assert not (tmp_path / "cache" / "control").exists()  # nothing generated
