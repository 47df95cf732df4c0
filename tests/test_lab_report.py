"""The lab report's accuracy intervals over problems, on eval directories written by hand."""

from __future__ import annotations

import json
import math

import pytest

from opsft.lab.report import _cell, _problem_ci95, method_colors


def write_eval(directory, sets):
    """An `opsft eval` output with one sample per problem: {name: (group, [correct per problem])}."""
    summary = {"sets": {name: {"group": group} for name, (group, _) in sets.items()}}
    (directory).mkdir(parents=True)
    (directory / "eval_summary.json").write_text(json.dumps(summary))
    for name, (_, correct) in sets.items():
        (directory / "sets" / name).mkdir(parents=True)
        rows = [{"index": i, "samples": [{"correct": c}]} for i, c in reversed(list(enumerate(correct)))]
        (directory / "sets" / name / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_interval_over_problems_averages_seeds_per_problem(tmp_path):
    write_eval(tmp_path / "s0", {"a": ("in_domain", [1, 1, 0, 0]), "b": ("out_of_domain", [1, 0]),
                                 "c": ("out_of_domain", [0, 0, 1])})
    write_eval(tmp_path / "s1", {"a": ("in_domain", [1, 0, 0, 0]), "b": ("out_of_domain", [1, 1]),
                                 "c": ("out_of_domain", [0, 0, 1])})
    result = _problem_ci95([tmp_path / "s0", tmp_path / "s1"])

    def se2(values):  # squared standard error of a mean
        mean = sum(values) / len(values)
        return sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)

    # per-problem accuracies averaged over the two seeds: a = (1, .5, 0, 0); b = (1, .5); c = (0, 0, 1)
    assert result["in_domain_ci95"] == pytest.approx(1.959964 * math.sqrt(se2([1, 0.5, 0, 0])))
    assert result["out_of_domain_ci95"] == pytest.approx(1.959964 * math.sqrt(se2([1, 0.5]) + se2([0, 0, 1])) / 2)
    assert _problem_ci95([tmp_path / "missing"]) == {"in_domain_ci95": None, "out_of_domain_ci95": None}


def test_cell_shows_what_is_known():
    assert _cell((0.5, None)) == "0.500"
    assert _cell((0.5, 0.1), ci95=0.2) == "0.500 ± 0.100 [±0.200]"
    assert _cell((0.5, None), ci95=float("nan")) == "0.500" and _cell((None, None)) == "—"


@pytest.mark.parametrize("n", [1, 10, 13, 20])
def test_every_method_in_a_plot_has_its_own_colour(n):
    colors = method_colors(n)
    assert len(colors) == n and len(set(colors)) == n
