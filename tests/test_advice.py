"""methods/advice.py: the study's reading for a dataset's regime, where `opsft score` shows it and where
docs/results.md states it (the same text in both)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from opsft.methods.advice import FAR_BELOW, NEAR_FROM, READINGS, advice, format_advice, regime

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("phi_mean, expected", [
    (-0.415, "far"), (-11.0, "far"), (FAR_BELOW - 1e-9, "far"), (FAR_BELOW, "between"), (-0.2, "between"),
    (NEAR_FROM - 1e-9, "between"), (NEAR_FROM, "near"), (0.0, "near"), (0.669, "near"), (math.nan, "between")])
def test_the_regime_is_read_off_phi_mean_at_the_stated_thresholds(phi_mean, expected):
    assert regime(phi_mean) == expected == advice(phi_mean)["regime"]
    assert advice(phi_mean)["text"] == READINGS[expected]


def test_results_page_quotes_every_reading_and_its_thresholds():
    page = flat(RESULTS.read_text())
    for name, text in READINGS.items():
        assert flat(text) in page, f"docs/results.md does not quote the '{name}' reading of methods/advice.py"
    far, near = (f"{x:g}".replace("-", "−") for x in (FAR_BELOW, NEAR_FROM))
    assert f"phi_mean < {far}" in page and f"{far} ≤ phi_mean < {near}" in page and f"phi_mean ≥ {near}" in page


def test_the_readings_name_the_studys_measured_regimes():
    """The weak and strong regimes' phi_mean quoted in the readings are the ones the results page measured."""
    page = RESULTS.read_text()
    weak, strong = (re.search(rf"{kind} \(train phi_mean ([-+][0-9.]+)\)", page).group(1)
                    for kind in ("weak", "strong"))
    assert f"phi_mean {weak})" in READINGS["far"] and f"phi_mean {strong})" in READINGS["near"]
    assert regime(float(weak)) == "far" and regime(float(strong)) == "near"


def test_score_prints_and_writes_the_reading(tmp_path, tiny_model_dir, capsys):
    """opsft score (and opsft.score) on a random tiny model: its data are far from it, and it says so."""
    from datasets import Dataset

    from opsft import score
    from opsft.cli import main

    rows = [{"prompt": f"What is {a} + 1?", "completion": f"{a + 1}."} for a in range(4)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["phi_mean"]["mean"] < FAR_BELOW and summary["advice"] == advice(summary["phi_mean"]["mean"])
    shown = format_advice(summary["advice"])
    assert shown in capsys.readouterr().out and shown in (tmp_path / "out" / "summary.md").read_text()
    assert flat(shown).count("weak regime") == 1 and "64 training problems" in flat(shown)
    _, api_summary = score(str(tiny_model_dir), Dataset.from_list(rows), progress=False)
    assert api_summary["advice"] == summary["advice"]
