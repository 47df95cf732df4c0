"""What `opsft control lab` shows: one row per method and baseline (return, and the D4RL normalised score where
the task has one: mean ± std over seeds, and the 95 % interval over all evaluation episodes), the data's returns
with the curated subset, DDT phi of the data under p_ref before and after curation, training curves, an HTML page.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..lab.report import write_html
from .commands import curated_indices, episode_phi, phi_statistics
from .data import load_episodes
from .plots import plot_phi, plot_returns, plot_scores, plot_training_curves
from .policy import load_policy


def data_phi(data: str, env_id: str, reference: Path) -> dict:
    """DDT phi of the data under p_ref: all episodes, and the curated (percentile tiers) subset."""
    policy, _ = load_policy(reference)
    episodes = load_episodes(data, env_id)
    per_episode = episode_phi(policy, episodes)
    curated = curated_indices(episodes.returns, "tiers")
    return {"all": phi_statistics(per_episode), "curated": phi_statistics([per_episode[i] for i in curated]),
            "per_episode": [float(p.mean()) for p in per_episode], "curated_episodes": curated.tolist()}


def collect_rows(out: Path, settings: dict) -> list[dict]:
    rows = []
    names = [(m, f"{m}") for m in settings["methods"]] + [(f"d3rlpy_{b}", f"{b} (d3rlpy)")
                                                          for b in settings["baselines"]]
    for run, label in names:
        summaries = [json.loads((out / "runs" / f"{run}-seed{s}" / "summary.json").read_text())
                     for s in settings["seeds"] if (out / "runs" / f"{run}-seed{s}" / "summary.json").exists()]
        if not summaries:
            continue
        row = {"method": label, "seeds": len(summaries), "trained_on": summaries[0]["trained_on"],
               "train_seconds": [s["train_seconds"] for s in summaries]}
        for key in ("return", "normalised_score"):
            if all(key in s.get("eval", {}) for s in summaries):
                per_seed = [s["eval"][key]["mean"] for s in summaries]
                episodes = np.concatenate([_values(s["eval"], key) for s in summaries])
                row[key] = {"per_seed": per_seed, "mean": float(np.mean(per_seed)),
                            "std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                            "ci95_episodes": float(1.959964 * episodes.std(ddof=1) / math.sqrt(len(episodes)))
                            if len(episodes) > 1 else 0.0}
        rows.append(row)
    return rows


def _values(evaluation: dict, key: str) -> np.ndarray:
    returns = np.asarray(evaluation["returns"], dtype=np.float64)
    if key == "return":
        return returns
    low, high = evaluation["reference_scores"]
    return 100 * (returns - low) / (high - low)


def format_results(rows: list[dict], settings: dict, data_summary: dict) -> str:
    scored = any("normalised_score" in r for r in rows)
    head = "| method | seeds | trained on (episodes, distinct) | return | ± 95 % CI (episodes) |" + \
           (" normalised score |" if scored else "") + " train time (s) |"
    lines = [f"Data: {data_summary['source']} — {data_summary['episodes']} episodes, return mean "
             f"{data_summary['return_mean']:.1f} (min {data_summary['return_min']:.1f}, max "
             f"{data_summary['return_max']:.1f}); evaluation: {settings['eval_episodes']} episodes per run, mean ± "
             f"std over seeds.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ret = r.get("return")
        cells = [r["method"], str(r["seeds"]), f"{r['trained_on']['episodes']}, {r['trained_on']['distinct']}",
                 f"{ret['mean']:.1f} ± {ret['std']:.1f}" if ret else "—",
                 f"± {ret['ci95_episodes']:.1f}" if ret else "—"]
        if scored:
            n = r.get("normalised_score")
            cells.append(f"{n['mean']:.1f} ± {n['std']:.1f}" if n else "—")
        cells.append(f"{np.mean(r['train_seconds']):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_phi(phi: dict) -> str:
    lines = ["DDT phi of the data under p_ref (the seed-0 reference; nats per step, 0 = the policy's own actions):",
             "", "| episodes | count | phi_mean (± s.e.) | median episode phi_mean |", "|---|---|---|---|"]
    for name in ("all", "curated"):
        s = phi[name]
        lines.append(f"| {name} | {s['episodes']} | {s['phi_mean']:+.3f} ± {s['phi_sem']:.3f} | "
                     f"{s['episode_phi_mean']['median']:+.3f} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, settings: dict, data: str, env_id: str, reference: Path) -> dict:
    report = out / "report"
    report.mkdir(exist_ok=True)
    episodes = load_episodes(data, env_id)
    returns = episodes.returns
    phi = data_phi(data, env_id, reference)
    data_summary = {"source": data, "episodes": len(episodes), "return_mean": float(returns.mean()),
                    "return_min": float(returns.min()), "return_max": float(returns.max()),
                    "skipped": episodes.skipped}
    rows = collect_rows(out, settings)
    table = format_results(rows, settings, data_summary) + "\n" + format_phi(phi)
    (report / "results.md").write_text(table)
    result = {"settings": settings, "data": data_summary, "rows": rows,
              "phi": {k: phi[k] for k in ("all", "curated")}}
    (report / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    curated = np.array(phi["curated_episodes"])
    name = Path(data).parent.name if Path(data).name == "data.npz" else data  # a generated set: its cache name
    plot_returns(returns, curated, report / "returns.png", title=name)
    plot_phi([np.array([p]) for p in phi["per_episode"]], curated, report / "phi.png",
             title=f"{name} under p_ref (the first seed's stage A)")
    plot_scores(rows, report / "scores.png")
    plot_training_curves(out, settings, report / "training_curves.png")
    write_html(report, table, settings, title=f"opsft control lab ({settings['profile']})",
               images=(("Return by method", "scores.png"), ("Returns of the data and the curated subset",
                                                            "returns.png"),
                       ("DDT phi of the data under p_ref", "phi.png"), ("Training curves (seed 0)",
                                                                          "training_curves.png")))
    return result
