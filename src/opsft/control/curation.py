"""Curating demonstrations by episode return: what filtered behaviour cloning and iw-SFT train on.

    percentile tiers (the iw-SFT authors'): for each tier p in (90, 95, 98), the episodes with R >= the p-th
        percentile of the returns; the tiers are concatenated, so an episode above the 98th percentile is
        there three times (stratified duplication)
    top fraction: the best ceil(f * E) episodes by return, once each
    quality (SFT(Q)): q_b = (R_b - R_min) / (R_max - R_min) over the whole dataset, in [0, 1]; 1 when every
        return is equal. Our reading of the paper's SFT(Q) for control: its code has none.
"""

from __future__ import annotations

import math

import numpy as np

from ..runtime.errors import OpsftError

AUTHORS_TIERS = (90.0, 95.0, 98.0)


def percentile_tiers(returns, tiers=AUTHORS_TIERS) -> np.ndarray:
    """Indices of the curated episodes, tier after tier, each tier in episode order (numpy's linear percentile)."""
    returns = np.asarray(returns, dtype=np.float64)
    if not tiers or any(not 0 <= p <= 100 for p in tiers):
        raise OpsftError(f"percentile tiers must lie in [0, 100] (got {list(tiers)})")
    return np.concatenate([np.flatnonzero(returns >= np.percentile(returns, p)) for p in tiers])


def top_fraction(returns, fraction: float) -> np.ndarray:
    """Indices of the ceil(fraction * E) episodes with the highest returns (ties: the earlier episode), best first."""
    if not 0 < fraction <= 1:
        raise OpsftError(f"the fraction of episodes kept must lie in (0, 1] (got {fraction})")
    returns = np.asarray(returns, dtype=np.float64)
    order = np.argsort(-returns, kind="stable")
    return order[:math.ceil(fraction * len(returns))]


def quality(returns) -> np.ndarray:
    """q_b = (R_b - R_min) / (R_max - R_min) over the dataset's returns (1 everywhere when they are all equal)."""
    returns = np.asarray(returns, dtype=np.float64)
    spread = returns.max() - returns.min()
    return np.ones_like(returns) if spread == 0 else (returns - returns.min()) / spread
