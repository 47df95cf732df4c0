"""The control pictures: a quantity per episode for all episodes and the curated ones (returns, DDT phi), the
evaluation return of each method, and training curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram_with_subset(values, subset, path: Path, *, xlabel: str, title: str, zero_line: bool = False) -> None:
    """Histogram of one value per episode, all episodes and (over it) the distinct episodes at `subset`."""
    plt = _plt()
    values = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    bins = np.histogram_bin_edges(values, bins=min(40, max(10, len(values) // 4)))
    ax.hist(values, bins=bins, color="#4c72b0", alpha=0.7, label=f"all ({len(values)} episodes)")
    if subset is not None:
        distinct = np.unique(subset)
        ax.hist(values[distinct], bins=bins, color="#dd8452", alpha=0.8,
                label=f"curated ({len(distinct)} distinct, {len(subset)} with duplicates)")
    if zero_line:
        ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("episodes")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_phi(per_episode, curated, path: Path, title: str) -> None:
    """Per-episode phi_mean (DDT under a policy), all and curated."""
    histogram_with_subset([p.mean() for p in per_episode], curated, path, title=title, zero_line=True,
                          xlabel="phi_mean per episode (nats per step; 0 = the policy's own actions)")


def plot_returns(returns, curated, path: Path, title: str) -> None:
    histogram_with_subset(returns, curated, path, xlabel="episode return", title=title)


def plot_scores(rows: list[dict], path: Path) -> None:
    """Evaluation return of each method and baseline: mean ± std over seeds, and each seed."""
    plt = _plt()
    rows = [r for r in rows if "return" in r]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    x = np.arange(len(rows))
    ax.bar(x, [r["return"]["mean"] for r in rows], yerr=[r["return"]["std"] for r in rows], capsize=3,
           color=["#dd8452" if "d3rlpy" in r["method"] else "#4c72b0" for r in rows])
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["return"]["per_seed"]), r["return"]["per_seed"], color="black", s=8, zorder=3)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("return (mean ± std over seeds; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training_curves(out: Path, settings: dict, path: Path) -> None:
    """Training loss against step of each method's first-seed run (stage C; bc and bc_transitions: stage A)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    seed = settings["seeds"][0]
    for method in settings["methods"]:
        run = out / "runs" / f"{method}-seed{seed}"
        log = {"bc": run / "reference.log.jsonl", "bc_transitions": run / "policy_stage_a.log.jsonl"}.get(
            method, run / "train_log.jsonl")
        if log.exists():
            entries = [json.loads(line) for line in log.read_text().splitlines() if line]
            ax.plot([e["step"] for e in entries], [e["loss"] for e in entries], label=method, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (the method's own objective)")
    ax.set_yscale("symlog")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
