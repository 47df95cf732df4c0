from __future__ import annotations

import numpy as np
import pytest

from opsft.commands.report import format_markdown, format_table
from opsft.methods.ddt import phi_statistics, phi_summary


def test_summary_pools_tokens_exactly_and_counts_thresholds():
    rng = np.random.default_rng(0)
    token_phis = [rng.normal(-0.1, 1.0, size=n) for n in (5, 17, 40, 3)]
    scored = [{**phi_statistics(p), "truncated": i == 1} for i, p in enumerate(token_phis)]
    summary = phi_summary(scored, in_threshold=-0.05, out_threshold=-0.1)
    pooled = np.concatenate(token_phis)
    assert summary["n_tokens"] == pooled.size and summary["n_truncated"] == 1
    assert summary["token_phi"]["mean"] == pytest.approx(pooled.mean())
    assert summary["token_phi"]["std"] == pytest.approx(pooled.std())
    means = np.array([p.mean() for p in token_phis])
    assert summary["phi_mean"]["median"] == pytest.approx(np.median(means))
    assert summary["in_distribution"]["share"] == pytest.approx((means >= -0.05).mean())
    assert summary["out_of_distribution"]["share"] == pytest.approx((means < -0.1).mean())

    summary["run"] = {"model": "m", "data": "d", "temperature": 1.0, "prompt_format": "chat"}
    summary["skipped"] = {"empty_completion": 2}
    table = format_table(summary)
    assert "skipped 2: empty_completion 2" in table and "1 completions truncated" in table
    assert format_markdown(summary).count("\n") == 3
