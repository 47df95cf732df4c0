"""avg@k, pass@k and their intervals, against hand computations on fixed per-sample results."""

from __future__ import annotations

import math

import pytest

from opsft.engine.evaluation import (
    accuracy_summary,
    avg_at_k,
    macro_mean_interval,
    mean_interval,
    paired_difference,
    pass_at_k,
    pass_at_k_one,
    wilson_interval,
)

RESULTS = [[True, False, False, True], [False, False, False, False], [True, True, True, True]]


def test_avg_and_pass_at_k_by_hand():
    assert avg_at_k(RESULTS) == pytest.approx((2 / 4 + 0 + 1) / 3)
    assert pass_at_k(RESULTS, 1) == pytest.approx(0.5)  # pass@1 is the mean accuracy
    # problem 1: 1 - C(2,2)/C(4,2) = 5/6; problem 2: 0; problem 3: 1
    assert pass_at_k(RESULTS, 2) == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert pass_at_k(RESULTS, 4) == pytest.approx(2 / 3)  # solved at least once
    assert pass_at_k_one(5, 1, 3) == pytest.approx(1 - math.comb(4, 3) / math.comb(5, 3))


def test_pass_at_k_equals_the_brute_force_probability():
    import itertools

    outcomes = [True, False, True, False, False]
    for k in range(1, 6):
        draws = list(itertools.combinations(outcomes, k))
        assert pass_at_k_one(5, 2, k) == pytest.approx(sum(any(d) for d in draws) / len(draws))
    with pytest.raises(ValueError):
        pass_at_k_one(3, 1, 4)


def test_intervals():
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook value
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    values = [0.5, 0.0, 1.0]
    half = 1.959963984540054 * 0.5 / math.sqrt(3)  # sd of (0.5, 0, 1) is 0.5
    assert mean_interval(values) == pytest.approx((max(0, 0.5 - half), min(1, 0.5 + half)))


def test_paired_difference_by_hand():
    a, b = {"x": [1, 1, 0, 0], "y": [1, 0]}, {"x": [0, 1, 0, 1], "y": [0, 0]}
    # x: d = (1, 0, 0, -1), mean 0, var/n = (2/3)/4; y: d = (1, 0), mean 1/2, var/n = (1/2)/2
    delta, half = paired_difference(a, b)
    assert delta == pytest.approx(0.25) and half == pytest.approx(1.959964 * math.sqrt(1 / 6 + 1 / 4) / 2)
    assert paired_difference(a, a) == (0, 0)
    with pytest.raises(ValueError):
        paired_difference({"x": [1, 0]}, {"x": [1]})


def test_macro_mean_interval_by_hand():
    # x: mean 1/2, var 1/3 over 4 problems; y: mean 1/3, var 1/3 over 3 problems; z: one value, no variance
    mean, half = macro_mean_interval({"x": [1, 1, 0, 0], "y": [1, 0, 0]})
    assert mean == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert half == pytest.approx(1.959964 * math.sqrt((1 / 3) / 4 + (1 / 3) / 3) / 2)
    assert math.isnan(macro_mean_interval({"z": [1.0]})[1])


def test_summary_of_greedy_and_sampled_results():
    greedy = accuracy_summary([[True], [False], [True], [True]])
    assert greedy["accuracy"] == 0.75 and greedy["pass@1"] == 0.75
    assert greedy["accuracy_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    sampled = accuracy_summary(RESULTS)
    assert sampled["samples_per_problem"] == 4 and sampled["problems"] == 3
    assert sampled["accuracy"] == pytest.approx(0.5) and sampled["pass@4"] == pytest.approx(2 / 3)
    assert sampled["pass_at"]["2"] == pytest.approx(11 / 18)
    assert sampled["accuracy_ci95"] == pytest.approx(list(mean_interval([0.5, 0.0, 1.0])))
    with pytest.raises(ValueError):
        accuracy_summary([[True], [True, False]])
