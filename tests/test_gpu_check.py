"""benchmarks/gpu_check.py's dry run: every part of the GPU check on the CPU at toy sizes, so that the check a
maintainer runs on a GPU cannot rot between GPU runs. Its numbers mean nothing; that it runs and reports does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_runs_every_part(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert set(parts) == {"tests", "scorer", "losses", "peer", "decoding"} and report["dry_run"]
    assert "12/" in parts["tests"]["pytest"] and "tests collected" in parts["tests"]["pytest"]  # the gpu cases
    assert parts["scorer"]["fp32"]["max_abs_phi_difference"] < 1e-3  # fp32: opsft's phi is the naive phi
    assert set(parts["losses"]) >= {"sft", "dft", "idft", "iwsft", "eaft", "asft"}
    assert {"opsft", "trl", "plain"} <= set(parts["peer"]) and parts["peer"]["tokens"] > 0
    assert parts["decoding"]["tokens"] == 2 * 8
    assert "DRY RUN" in (tmp_path / "gpu_check.md").read_text()
