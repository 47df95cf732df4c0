"""The lab's report: one row per method (mean ± std over seeds), plots, and an HTML page tying them together.

Columns: in-domain accuracy, out-of-domain accuracy (each also with its 95 % interval over problems, from
per-problem accuracies averaged over seeds: `evaluation.macro_mean_interval`), drift from the base (DDT of the
base's samples), the training data's phi_mean under the base model, training tokens, training time. The base
model is the first row. A second table gives the accuracy on each test set. A third gives each method's
difference from SFT (from the base when SFT was not run), paired by problem (`evaluation.paired_difference`,
per-problem accuracies averaged over seeds) with a 95 % interval over problems, and the std over seeds of the
per-seed differences. Where learning rates were chosen, a fourth gives each rate's validation accuracy and the
choice. The learning-vs-forgetting plot puts each method at (in-domain gain, out-of-domain change) over the base.
Written into <lab>/report/: results.md, results.csv, results.json, differences.json, accuracy.png,
learning_vs_forgetting.png, phi_hist.png, training_curves.png, index.html.

Several regimes (lab.run_lab): <out>/report/ compares them, `write_regimes_report`: each regime's training-data
phi_mean beside every method's gain over SFT, in-domain and out-of-domain with their intervals (regimes.md,
regimes.json), and the learning-vs-forgetting plot with one panel per regime.
"""

from __future__ import annotations

import csv
import html
import json
import math
import statistics
from pathlib import Path

import numpy as np

from ..engine.evaluation import macro_mean_interval, paired_difference
from .methods import method_spec


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _phi_of(out: Path, kind: str) -> float | None:
    """phi_mean of a kind of training data under the base model (score/<kind>/; preference pairs have none)."""
    summary = _read(out / "score" / kind / "summary.json") if kind != "prefs" else None
    return summary["phi_mean"]["mean"] if summary else None


def _iterated(run_dir: Path) -> dict | None:
    """What an iterative method's rounds trained, in all (iterate_summary.json): tokens and seconds."""
    summary = _read(run_dir / "iterate_summary.json")
    if not summary:
        return None
    rounds = [r["train"] for r in summary["rounds"]]
    return {"iterated": True, "train_tokens": sum(r["train_tokens"] or 0 for r in rounds),
            "train_seconds": sum(r["seconds"] or 0 for r in rounds)}


def _train_tokens(out: Path, runs: list[dict]) -> list[float]:
    """Each run's training tokens: its plan (steps x tokens a step sees), or where the plan cannot
    know them (sdft's samples, an iterative method's rounds) what its training counted."""
    tokens = []
    for run in runs:
        if "skipped" in run:
            continue
        if run.get("train_tokens") is not None:
            tokens.append(run["train_tokens"])
        elif (counted := _read(out / run["dir"] / "train_summary.json") or _iterated(out / run["dir"])):
            tokens.append(counted["train_tokens"])
    return tokens


def collect_rows(out: Path, settings: dict, runs: dict) -> list[dict]:
    base = _read(out / "eval" / "base" / "eval_summary.json")
    rows = [{"method": "base (no training)", "seeds": 1, "in_domain": (base["in_domain_accuracy"], None),
             **_problem_ci95([out / "eval" / "base"]),
             "sets": {name: (info["accuracy"], None) for name, info in base["sets"].items()},
             "out_of_domain": (base["out_of_domain_accuracy"], None),
             "drift": ((base.get("drift") or {}).get("drift"), None), "train_phi_mean": None,
             "train_tokens": (0, None), "train_seconds": (0, None), "learning_rate": None, "note": ""}]
    for method in settings["methods"]:
        names = [f"{method}-seed{seed}" for seed in settings["seeds"]]
        skipped = [runs[n]["skipped"] for n in names if "skipped" in runs.get(n, {})]
        trained = [runs[n] for n in names if n in runs and "skipped" not in runs[n]]
        eval_dirs = [out / r["dir"] / "eval" for r in trained]
        evals = [_read(d / "eval_summary.json") for d in eval_dirs]
        trains = [_read(out / r["dir"] / "train_summary.json") or _iterated(out / r["dir"]) for r in trained]
        rates = sorted({r["learning_rate"] for r in trained}, key=lambda x: (x is None, x))
        evals, trains = [e for e in evals if e], [t for t in trains if t]
        rows.append({
            "method": method, "seeds": len(evals),
            "in_domain": _spread([e["in_domain_accuracy"] for e in evals]),
            "out_of_domain": _spread([e["out_of_domain_accuracy"] for e in evals]),
            **_problem_ci95(eval_dirs),
            "sets": {name: _spread([e["sets"][name]["accuracy"] for e in evals]) for name in base["sets"]},
            "drift": _spread([(e.get("drift") or {}).get("drift") for e in evals]),
            "train_phi_mean": _phi_of(out, method_spec(method)[1]),
            "train_tokens": _spread(_train_tokens(out, [runs[n] for n in names if n in runs])),
            "train_seconds": _spread([t["train_seconds"] for t in trains]),
            "learning_rate": ", ".join("default" if r is None else f"{r:g}" for r in rates) or None,
            "note": skipped[0] if skipped else "",
        })
    return rows


def _per_problem(eval_dir: Path, group: str) -> dict[str, list[float]] | None:
    """{set: per-problem accuracy (mean over its samples), in problem order} of one eval's sets in `group`."""
    summary = _read(eval_dir / "eval_summary.json")
    if not summary:
        return None
    result = {}
    for name, info in summary["sets"].items():
        if info["group"] == group:
            samples = (eval_dir / "sets" / name / "samples.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in samples]
            result[name] = [sum(x["correct"] for x in r["samples"]) / len(r["samples"])
                            for r in sorted(records, key=lambda r: r["index"])]
    return result


def _seed_average(evals: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    return {name: [statistics.fmean(values) for values in zip(*(e[name] for e in evals), strict=True)]
            for name in evals[0]}


def _problem_ci95(eval_dirs: list[Path]) -> dict:
    """{in_domain_ci95, out_of_domain_ci95}: the 95 % half-width over problems of each macro accuracy, with
    per-problem accuracies averaged over the seeds' evals (None where no eval or no set)."""
    result = {}
    for group in ("in_domain", "out_of_domain"):
        per_problem = [p for p in (_per_problem(d, group) for d in eval_dirs) if p]
        result[f"{group}_ci95"] = macro_mean_interval(_seed_average(per_problem))[1] if per_problem else None
    return result


def collect_differences(out: Path, settings: dict, runs: dict, reference: str | None = "sft") -> list[dict]:
    """Each method (and the base) against `reference` (a method; None: the base), or against the base when the
    reference method was not run."""
    reference = reference if reference in settings["methods"] else None
    base_dir = out / "eval" / "base"

    def eval_dirs(method):
        if method is None:
            return {seed: base_dir for seed in settings["seeds"]}
        named = {seed: runs.get(f"{method}-seed{seed}", {}) for seed in settings["seeds"]}
        return {seed: out / r["dir"] / "eval" for seed, r in named.items()
                if "dir" in r and (out / r["dir"] / "eval" / "eval_summary.json").exists()}

    against = eval_dirs(reference)
    if not against:
        return []
    groups = {"in_domain": "in_domain_accuracy", "out_of_domain": "out_of_domain_accuracy"}
    theirs = {group: _seed_average([_per_problem(d, group) for d in against.values()]) for group in groups}
    their_summaries = {seed: _read(d / "eval_summary.json") for seed, d in against.items()}
    rows = []
    for method in [None, *settings["methods"]]:
        if method == reference:
            continue
        dirs, row = eval_dirs(method), {"method": method or "base (no training)", "vs": reference or "base"}
        if not dirs:
            continue
        summaries = {seed: _read(d / "eval_summary.json") for seed, d in dirs.items()}
        for group, key in groups.items():
            mine = _seed_average([_per_problem(d, group) for d in dirs.values()])
            delta, half_width = paired_difference(mine, theirs[group])
            per_seed = [summaries[seed][key] - their_summaries[seed][key] for seed in dirs if seed in against]
            row[group] = {"delta": delta, "ci95_half_width": half_width,
                          "seed_std": statistics.stdev(per_seed) if len(per_seed) > 1 else None}
        rows.append(row)
    return rows


def format_differences(rows: list[dict]) -> str:
    if not rows:
        return ""
    vs = rows[0]["vs"]
    lines = [f"Difference from {vs} (method − {vs}), paired by problem: Δ [95 % interval over problems] "
             "(std over seeds of the per-seed Δ)", "",
             "| method | Δ in-domain acc | Δ out-of-domain acc |", "|---|---|---|"]

    lines += [f"| {r['method']} | {_delta(r['in_domain'])} | {_delta(r['out_of_domain'])} |" for r in rows]
    return "\n".join(lines)


def _delta(d: dict | None) -> str:
    if d is None:
        return "—"
    seeds = f" (seeds ± {d['seed_std']:.3f})" if d["seed_std"] is not None else ""
    return f"{d['delta']:+.3f} [±{d['ci95_half_width']:.3f}]{seeds}"


def format_selection(selected: dict) -> str:
    """The learning-rate choice: each rate's accuracy on the validation split, first seed, and the rate kept."""
    methods = selected.get("methods") or {}
    if not methods:
        return ""
    rates = sorted({t["learning_rate"] for m in methods.values() for t in m["trials"]})
    lines = [f"Learning rate chosen per method on the validation split ({selected['validation_problems']} training "
             "problems held out, never trained on; the test sets are not read): validation accuracy at each rate on "
             "the first seed, ties to the smaller rate", "",
             "| method | " + " | ".join(f"lr {r:g}" for r in rates) + " | chosen |",
             "|---|" + "---|" * (len(rates) + 1)]
    for method, m in methods.items():
        accuracy = {t["learning_rate"]: (f"{t['validation_accuracy']:.3f}" if "validation_accuracy" in t
                                         else "skipped") for t in m["trials"]}  # skipped: an empty round
        lines.append(f"| {method} | " + " | ".join(accuracy.get(r, "—") for r in rates)
                     + (f" | {m['learning_rate']:g} |" if "learning_rate" in m else " | none: every rate skipped |"))
    return "\n".join(lines)


def _cell(value: tuple | None, digits: int = 3, signed: bool = False, ci95: float | None = None) -> str:
    """'mean ± std over seeds [± 95 % half-width over problems]', each part where known."""
    mean, std = value if value else (None, None)
    if mean is None:
        return "—"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    text += f" ± {std:.{digits}f}" if std is not None else ""
    return text + (f" [±{ci95:.{digits}f}]" if ci95 is not None and not math.isnan(ci95) else "")


def format_results(rows: list[dict], settings: dict) -> str:
    lines = [f"opsft lab ({settings['profile']}, {settings.get('regime', '')} regime): {settings['model']}, "
             f"trained on {settings['train_data']}",
             "in-domain: " + ", ".join(settings["in_domain"]) + "; out-of-domain: " +
             ", ".join(settings["out_of_domain"]) + "; mean ± std over seeds [95 % interval over problems]", "",
             "| method | seeds | in-domain acc | out-of-domain acc | drift | train data phi_mean | learning rate "
             "| train tokens | train time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        phi = "—" if r["train_phi_mean"] is None else f"{r['train_phi_mean']:+.3f}"
        tokens = _cell(r["train_tokens"], 0)
        accuracies = [_cell(r[group], ci95=r[f"{group}_ci95"]) for group in ("in_domain", "out_of_domain")]
        lines.append(f"| {r['method']} | {r['seeds']} | {accuracies[0]} | {accuracies[1]} | "
                     f"{_cell(r['drift'], signed=True)} | {phi} | {r['learning_rate'] or '—'} | {tokens} | "
                     f"{_cell(r['train_seconds'], 0)} |"
                     + (f" {r['note']}" if r["note"] else ""))
    return "\n".join(lines)


def format_sdft_settings(out: Path, runs: dict) -> str:
    """What the sdft runs used of TRL's SDFTTrainer (its train_summary.json), or "" when the lab ran none."""
    for name, run in runs.items():
        summary = _read(out / run["dir"] / "train_summary.json") if "dir" in run else None
        if summary and "sdft" in summary:
            used = ", ".join(f"{k} {v!r}" for k, v in summary["sdft"].items())
            return f"sdft (TRL's experimental SDFTTrainer), as {name} ran it: {used}"
    return ""


def format_sets(rows: list[dict]) -> str:
    names = list(rows[0]["sets"])
    lines = ["Accuracy per test set (mean ± std over seeds)", "",
             "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {r['method']} | " + " | ".join(_cell(r["sets"].get(n)) for n in names) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out: Path, settings: dict, runs: dict, selected: dict | None = None) -> dict:
    report = out / "report"
    report.mkdir(exist_ok=True)
    rows = collect_rows(out, settings, runs)
    differences = collect_differences(out, settings, runs)
    table = format_results(rows, settings) + "\n\n" + format_sets(rows)
    if differences:
        table += "\n\n" + format_differences(differences)
    if selection := format_selection(selected or {}):
        table += "\n\n" + selection
    if sdft := format_sdft_settings(out, runs):
        table += "\n\n" + sdft
    (report / "results.md").write_text(table + "\n")
    (report / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (report / "differences.json").write_text(json.dumps(differences, indent=2) + "\n")
    with (report / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        keys = ["in_domain", "out_of_domain", "drift", "train_tokens", "train_seconds"]
        intervals = ["in_domain_ci95", "out_of_domain_ci95"]
        writer.writerow(["method", "seeds", *[f"{k}_{s}" for k in keys for s in ("mean", "std")], *intervals,
                         "train_phi_mean", "learning_rate", "note"])
        for r in rows:
            writer.writerow([r["method"], r["seeds"], *[("" if v is None else v) for k in keys for v in r[k]],
                             *[("" if r[k] is None else r[k]) for k in intervals],
                             "" if r["train_phi_mean"] is None else r["train_phi_mean"], r["learning_rate"] or "",
                             r["note"]])
    _plot_accuracy(rows, report / "accuracy.png")
    plot_learning_forgetting([regime_study(settings.get("regime", ""), out, settings, runs)],
                             report / "learning_vs_forgetting.png")
    _plot_phi(out, report / "phi_hist.png")
    _plot_curves(out, runs, report / "training_curves.png")
    write_html(report, table, settings)
    return {"rows": len(rows)}


def regime_study(regime: str, out: Path, settings: dict, runs: dict) -> dict:
    """One regime's evidence: its training data's phi_mean, each method against SFT and against the base."""
    return {"regime": regime, "train_data": settings["train_data"], "phi_mean": _phi_of(out, "raw"),
            "methods": settings["methods"], "vs_sft": collect_differences(out, settings, runs, "sft"),
            "vs_base": collect_differences(out, settings, runs, None)}


def format_regimes(studies: list[dict]) -> str:
    """Which loss when: every method's gain over SFT in each regime, beside the regime's training-data phi_mean."""
    heads = [f"{s['regime']} (train phi_mean {s['phi_mean']:+.3f})" if s["phi_mean"] is not None else s["regime"]
             for s in studies]
    lines = ["Gain over SFT in each regime (method − sft), paired by problem: Δ [95 % interval over problems] (std "
             "over seeds of the per-seed Δ). The regime's phi_mean is its reference solutions' distance from the "
             "base model (DDT: 0 = the model's own distribution)", "",
             "| method | " + " | ".join(f"{h}: Δ in-domain | {h}: Δ out-of-domain" for h in heads) + " |",
             "|---|" + "---|---|" * len(studies)]
    methods = ["base (no training)", *dict.fromkeys(m for s in studies for m in s["methods"] if m != "sft")]
    for method in methods:
        cells = []
        for s in studies:
            row = next((r for r in s["vs_sft"] if r["method"] == method and r["vs"] == "sft"), None)
            cells += [_delta(row and row["in_domain"]), _delta(row and row["out_of_domain"])]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_regimes_report(out: Path, labs: list[tuple[str, Path, dict, dict]]) -> dict:
    """<out>/report/: the regime table (regimes.md, regimes.json), the learning-vs-forgetting plot with a panel
    per regime, and index.html linking each regime's own report."""
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    studies = [regime_study(regime, lab_out, settings, runs) for regime, lab_out, settings, runs in labs]
    table = format_regimes(studies)
    (report / "regimes.md").write_text(table + "\n")
    (report / "regimes.json").write_text(json.dumps(studies, indent=2) + "\n")
    plot_learning_forgetting(studies, report / "learning_vs_forgetting.png")
    links = "".join(f'<li><a href="../{html.escape(s["regime"])}/report/index.html">{html.escape(s["regime"])}</a>: '
                    f"trained on {html.escape(s['train_data'])}</li>" for s in studies)
    write_html(report, table, labs[0][2], title="opsft lab: the regimes compared",
                images=(("Learning against forgetting", "learning_vs_forgetting.png"),), extra=f"<ul>{links}</ul>")
    return {"regimes": [s["regime"] for s in studies]}


def method_colors(n: int) -> list[tuple]:
    """n distinct colours, one per method in a plot: matplotlib's tab10 up to ten, tab20 beyond (the default
    cycle repeats after ten, and the full profile has thirteen methods)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_learning_forgetting(studies: list[dict], path: Path) -> None:
    """One panel per regime, one point per method: in-domain gain (x) against out-of-domain change (y) over the
    base model, each with its 95 % interval over problems (paired by problem, seeds averaged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(studies), figsize=(6.5 * len(studies), 5), dpi=120, squeeze=False)
    for ax, study in zip(axes[0], studies):
        points = [r for r in study["vs_base"] if r["vs"] == "base"]
        for r, color in zip(points, method_colors(len(points))):
            x, y = r["in_domain"], r["out_of_domain"]
            ax.errorbar(x["delta"], y["delta"], xerr=x["ci95_half_width"], yerr=y["ci95_half_width"], fmt="o",
                        markersize=5, capsize=2, linewidth=0.8, color="black" if r["method"] == "sft" else color)
            ax.annotate(r["method"], (x["delta"], y["delta"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.axvline(0, color="grey", linewidth=0.6)
        for r in points:  # SFT's point, dashed: right of and above it is better than SFT
            if r["method"] == "sft":
                ax.axvline(r["in_domain"]["delta"], color="black", linewidth=0.6, linestyle="--")
                ax.axhline(r["out_of_domain"]["delta"], color="black", linewidth=0.6, linestyle="--")
        phi = f", train phi_mean {study['phi_mean']:+.3f}" if study["phi_mean"] is not None else ""
        ax.set_title(f"{study['regime']} regime{phi}", fontsize=9)
        ax.set_xlabel("in-domain gain over the base (learning)", fontsize=9)
        ax.set_ylabel("out-of-domain change from the base (forgetting < 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_accuracy(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) + 2), 4), dpi=120)
    for offset, key, color in ((-0.2, "in_domain", "#1f77b4"), (0.2, "out_of_domain", "#ff7f0e")):
        means = [r[key][0] if r[key][0] is not None else np.nan for r in rows]
        half_widths = [r[f"{key}_ci95"] if r[f"{key}_ci95"] is not None else np.nan for r in rows]
        ax.bar(x + offset, means, 0.4, yerr=half_widths, capsize=3, color=color, label=key.replace("_", "-"))
    ax.set_xticks(x, [r["method"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (mean over seeds)\nbars: 95 % interval over problems", fontsize=9)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _phi_values(path: Path) -> list[float]:
    return [json.loads(line)["phi_mean"] for line in path.read_text().splitlines()] if path.exists() else []


def _plot_phi(out, path):
    from ..commands.report import plot_before_after

    plot_before_after(_phi_values(out / "score" / "raw" / "scored.jsonl"),
                      _phi_values(out / "score" / "realigned" / "scored.jsonl"), path)


def _plot_curves(out, runs, path):
    """Per method, the training curve averaged over seeds (band: min to max over seeds): the NLL of the
    reference tokens for the SFT family (whatever loss it optimises), each trainer's own loss for DPO/SimPO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}  # (panel, method) -> {step: [value per seed]}
    for name, run in runs.items():
        summary = _read(out / run["dir"] / "train_summary.json") if "dir" in run else None
        if not summary:
            continue
        key = "nll" if any("nll" in h for h in summary["log_history"]) else "loss"
        curve = curves.setdefault((key, run["method"]), {})
        for h in summary["log_history"]:
            if key in h and "step" in h:
                curve.setdefault(h["step"], []).append(h[key])
    panels = [p for p in ("nll", "loss") if any(k == p for k, _ in curves)] or ["nll"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), dpi=120, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        in_panel = [(method, curve) for (key, method), curve in curves.items() if key == panel]
        for (method, curve), color in zip(in_panel, method_colors(len(in_panel))):
            steps = sorted(curve)
            ax.plot(steps, [np.mean(curve[t]) for t in steps], label=method, linewidth=1.2, color=color)
            ax.fill_between(steps, [min(curve[t]) for t in steps], [max(curve[t]) for t in steps],
                            color=color, alpha=0.15)
        ax.set_xlabel("step")
        ax.set_ylabel("training NLL of the data (SFT family)" if panel == "nll" else "training loss (DPO, SimPO)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_html(report: Path, table: str, settings: dict, *, title: str | None = None, images=None,
                extra: str = "") -> None:
    title = title or f"opsft lab ({settings['profile']}, {settings.get('regime', '')} regime)"
    images = images or (("Accuracy", "accuracy.png"), ("Learning against forgetting", "learning_vs_forgetting.png"),
                        ("Training data: phi_mean before and after re-alignment", "phi_hist.png"),
                        ("Training curves", "training_curves.png"))
    page, caption, rows = [f"<h1>{html.escape(title)}</h1>{extra}"], [], []
    for line in [*table.splitlines(), ""]:  # caption lines, then a markdown table, for each table
        if line.startswith("|"):
            rows += [] if line.startswith("|---") else [line]
        elif rows:
            cells = "".join("<tr>" + "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in row.strip("|").split("|"))
                            + "</tr>" for tag, row in (("th" if i == 0 else "td", row) for i, row in enumerate(rows)))
            page.append(f"<p>{'<br>'.join(map(html.escape, caption))}</p><table>{cells}</table>")
            caption, rows = [line] if line else [], []
        elif line:
            caption.append(line)
    pictures = "".join(f'<h2>{html.escape(name)}</h2><img src="{file}">' for name, file in images)
    (report / "index.html").write_text(f"""<!doctype html><meta charset="utf-8"><title>opsft lab</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style>
{"".join(page)}
{pictures}
<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2))}</pre>""")