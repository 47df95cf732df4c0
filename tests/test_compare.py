"""`opsft compare` over eval and train directories: one table (markdown, CSV) and one bar chart."""

from __future__ import annotations

import csv
import json

import pytest

from opsft.cli import main


def eval_summary(accuracy_in, accuracy_out, model, drift=None):
    def one(group, accuracy):
        return {"group": group, "accuracy": accuracy, "accuracy_ci95": [accuracy - 0.1, accuracy + 0.1],
                "problems": 50}
    return {"model": model, "adapter": None, "sets": {"gsm": one("in_domain", accuracy_in),
                                                      "arith": one("out_of_domain", accuracy_out)},
            "in_domain_accuracy": accuracy_in, "out_of_domain_accuracy": accuracy_out,
            "drift": None if drift is None else {"drift": drift, "drift_sem": 0.01}}


def test_compare_reads_eval_and_training_runs(tmp_path, capsys):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "eval_summary.json").write_text(json.dumps(eval_summary(0.2, 0.6, "smollm2-135m", 0.0)))
    run = tmp_path / "idft"
    (run / "final").mkdir(parents=True)
    (run / "train_summary.json").write_text(json.dumps({"method": "idft", "train_tokens": 12345,
                                                        "train_seconds": 61.5, "steps": 20}))
    (tmp_path / "idft-eval").mkdir()  # an eval of the run's final model, elsewhere: it finds the run itself
    (tmp_path / "idft-eval" / "eval_summary.json").write_text(
        json.dumps(eval_summary(0.4, 0.5, str(run / "final"), -0.2)))
    assert main(["compare", "--runs", str(tmp_path / "base"), str(tmp_path / "idft-eval"), "--names", "base",
                 "IDFT", "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "| IDFT | idft | 0.400 (0.300–0.500) | 0.500 (0.400–0.600) | -0.200 ± 0.010 | 12,345 | 62 |" in printed
    assert "| base | base (no training) | 0.200" in printed
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))
    assert [r["run"] for r in rows] == ["base", "IDFT"]
    assert float(rows[1]["set:gsm"]) == pytest.approx(0.4) and rows[1]["train_tokens"] == "12345"
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", "--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "c")]) == 2
    assert "no eval_summary.json or train_summary.json" in capsys.readouterr().err
    assert main(["compare", "--runs", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
