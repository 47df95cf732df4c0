"""What `opsft score` shows a person: a summary (JSON, a printed table, markdown to paste into a
paper), a histogram of phi_mean, and an HTML page colouring the tokens of the most
out-of-distribution examples by phi."""

from __future__ import annotations

import html
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def phi_summary(scored: list[dict], *, in_threshold: float = -0.05, out_threshold: float = -0.1) -> dict[str, Any]:
    """Dataset-level statistics of per-example phi_mean, and of per-token phi pooled over all tokens."""
    means = np.array([s["phi_mean"] for s in scored], dtype=np.float64)
    n_tok = np.array([s["n_tokens"] for s in scored], dtype=np.float64)
    sums = np.array([s["phi_sum"] for s in scored], dtype=np.float64)
    sq_sums = n_tok * (np.array([s["phi_std"] for s in scored]) ** 2 + means ** 2)  # sum of phi_t^2
    total = n_tok.sum()
    token_mean = sums.sum() / total if total else math.nan
    q = np.quantile(means, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(means) else [math.nan] * 5
    return {
        "n_examples": len(scored),
        "n_tokens": int(total),
        "n_truncated": int(sum(bool(s["truncated"]) for s in scored)),
        "phi_mean": {
            "mean": float(means.mean()) if len(means) else math.nan,
            "std": float(means.std(ddof=1)) if len(means) > 1 else math.nan,
            "sem": float(means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.nan,
            "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]),
            "min": float(means.min()) if len(means) else math.nan,
            "max": float(means.max()) if len(means) else math.nan,
        },
        "token_phi": {
            "mean": float(token_mean),
            "std": float(math.sqrt(max(sq_sums.sum() / total - token_mean ** 2, 0.0))) if total else math.nan,
        },
        "in_distribution": {"threshold": in_threshold, "share": float((means >= in_threshold).mean())},
        "out_of_distribution": {"threshold": out_threshold, "share": float((means < out_threshold).mean())},
    }


def format_table(summary: dict[str, Any]) -> str:
    """The summary as the aligned text table `opsft score` prints."""
    p, t, run = summary["phi_mean"], summary["token_phi"], summary["run"]
    skipped = summary["skipped"]
    rows = [
        ("model", run["model"]),
        ("data", run["data"]),
        ("temperature", f"{run['temperature']:g} (prompt format: {run['prompt_format']})"),
        ("examples scored", f"{summary['n_examples']}"
         + (f"  (skipped {sum(skipped.values())}: {_reasons(skipped)})" if skipped else "  (none skipped)")),
        ("completion tokens", f"{summary['n_tokens']:,}" + (f"  ({summary['n_truncated']} completions truncated)"
                                                           if summary["n_truncated"] else "")),
        ("phi_mean  mean ± sem", f"{p['mean']:+.4f} ± {p['sem']:.4f}   (std {p['std']:.4f})"),
        ("phi_mean  median", f"{p['median']:+.4f}   (p05 {p['p05']:+.4f}, p25 {p['p25']:+.4f}, "
                             f"p75 {p['p75']:+.4f}, p95 {p['p95']:+.4f})"),
        ("token phi mean ± std", f"{t['mean']:+.4f} ± {t['std']:.4f}"),
        (f"in-distribution (phi_mean ≥ {summary['in_distribution']['threshold']:g})",
         f"{100 * summary['in_distribution']['share']:.1f}%"),
        (f"out-of-distribution (phi_mean < {summary['out_of_distribution']['threshold']:g})",
         f"{100 * summary['out_of_distribution']['share']:.1f}%"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def format_markdown(summary: dict[str, Any]) -> str:
    """One markdown table row (with header) to paste into a paper or an issue."""
    p, t, run = summary["phi_mean"], summary["token_phi"], summary["run"]
    return (
        "| model | data | τ | examples | phi_mean (mean ± sem) | median | token phi (mean ± std) | in-dist. | OOD |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {run['model']} | {run['data']} | {run['temperature']:g} | {summary['n_examples']} | "
        f"{p['mean']:+.3f} ± {p['sem']:.3f} | {p['median']:+.3f} | {t['mean']:+.3f} ± {t['std']:.3f} | "
        f"{100 * summary['in_distribution']['share']:.0f}% | {100 * summary['out_of_distribution']['share']:.0f}% |\n"
    )


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in Counter(counts).most_common())


def plot_histogram(scored: list[dict], summary: dict[str, Any], path: str | Path) -> None:
    """Histogram of per-example phi_mean with the in/out-of-distribution thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [s["phi_mean"] for s in scored]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.hist(means, bins=min(50, max(10, len(means) // 4)), color="#4c72b0", edgecolor="white")
    for key, rule, colour in (("in_distribution", "≥", "#2ca02c"), ("out_of_distribution", "<", "#d62728")):
        ax.axvline(summary[key]["threshold"], color=colour, linestyle="--",
                   label=f"{key.replace('_', '-')}: phi_mean {rule} {summary[key]['threshold']:g} "
                         f"({summary[key]['share']:.0%} of examples)")
    ax.axvline(0, color="black", linewidth=0.8)
    run = summary["run"]
    ax.set_title(f"DDT phi_mean per example — {run['model']} on {run['data']} (τ={run['temperature']:g})", fontsize=9)
    ax.set_xlabel("phi_mean (nats per completion token; 0 = the model's own distribution)")
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_before_after(before: list[float], after: list[float], path: str | Path) -> None:
    """Histograms of phi_mean: the original solutions against their Hinted Decoding rewrites."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    bins = np.linspace(min(before + after + [-1.0]), max(before + after + [0.2]), 30)
    ax.hist(before, bins=bins, alpha=0.6, label=f"original solutions (n={len(before)})", color="#d62728")
    if after:
        ax.hist(after, bins=bins, alpha=0.6, label=f"hinted-decoding rewrites (n={len(after)})", color="#2ca02c")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("phi_mean under the plain prompt (0 = the model's own distribution)")
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def worst_examples_html(items: list[dict], summary: dict[str, Any], path: str | Path) -> None:
    """An HTML page: the given examples (each with prompt_text, tokens, token_phi, phi_mean, index),
    completion tokens coloured by phi (red: below the model's own expectation, green: above)."""
    run = summary["run"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>opsft score: most out-of-distribution examples</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}"
        ".ex{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}"
        ".prompt{white-space:pre-wrap;color:#555;font-size:90%;border-left:3px solid #ddd;padding-left:.6em}"
        ".c{white-space:pre-wrap;font-family:ui-monospace,monospace;line-height:1.6}"
        ".c span{border-radius:2px}</style>",
        f"<h1>Most out-of-distribution examples</h1><p>DDT phi per completion token under <b>{html.escape(run['model'])}"
        f"</b> at τ = {run['temperature']:g}, data <code>{html.escape(run['data'])}</code>. "
        "Red tokens are less likely than the model's own expectation (phi &lt; 0), green more. "
        "Hover a token for its phi.</p>",
    ]
    for item in items:
        parts.append(f"<div class='ex'><b>row {item['index'] + 1}</b> — phi_mean {item['phi_mean']:+.3f} over "
                     f"{len(item['tokens'])} tokens<div class='prompt'>{html.escape(item['prompt_text'])}</div><div class='c'>")
        for token, phi in zip(item["tokens"], item["token_phi"]):
            parts.append(f"<span style='background:{_colour(phi)}' title='phi {phi:+.3f}'>{html.escape(token)}</span>")
        parts.append("</div></div>")
    Path(path).write_text("".join(parts), encoding="utf-8")


def _colour(phi: float) -> str:
    strength = min(1.0, abs(phi) / 3.0)
    return f"rgba(214,39,40,{strength:.2f})" if phi < 0 else f"rgba(44,160,44,{min(1.0, phi):.2f})"
