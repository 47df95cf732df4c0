"""What `opsft score` shows a person: a summary (JSON, a printed table, markdown to paste into a
paper), a histogram of phi_mean, and an HTML page colouring the tokens of the most
out-of-distribution examples by phi."""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..methods.advice import format_advice


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
        + (f"\n{format_advice(summary['advice'])}\n" if "advice" in summary else "")
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
