"""`opsft compare`: several runs side by side, as one table (markdown + CSV) and one bar chart.

Each argument is a directory holding an `opsft eval` result (eval_summary.json, there or in eval/) and/or
an `opsft train` run (train_summary.json). An eval of a trained model (its final/ directory) finds the
training run on its own. Per run: in-domain and out-of-domain accuracy (mean over the group's sets; the
95 % interval when the group has one set), every set's accuracy, drift, training tokens and wall time.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import OpsftError
from ..runtime.options import REQUIRED, Options, option

EVAL_KEYS = ("model", "sets", "in_domain_accuracy", "out_of_domain_accuracy")


@dataclass
class CompareConfig(Options):
    runs: list[str] = option(REQUIRED, "run or eval directories to compare")
    out: str = option("runs/compare", "output directory for compare.md, compare.csv and compare.png",
                      output_dir=True)
    names: list[str] | None = option(None, "a label per run (default: the directory names)")

    def rules(self):
        return [(bool(self.runs), "--runs: name at least one run or eval directory"),
                (self.names is None or len(self.names) == len(self.runs),
                 f"--names: one per run ({len(self.runs)}), got {len(self.names or [])}")]


def _read_summary(path: Path, keys: tuple[str, ...]) -> dict:
    """An opsft summary file, checked to hold `keys`; a clear error where it is not one."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OpsftError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    missing = [k for k in keys if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise OpsftError(f"{path}: not an opsft summary (no {', '.join(missing)})")
    return summary


def _find(directory: Path, filename: str) -> Path | None:
    for candidate in (directory / filename, directory / "eval" / filename):
        if candidate.is_file():
            return candidate
    return None


def collect(directory: Path, name: str) -> dict:
    """One row of the comparison from a run directory."""
    eval_path, train_path = _find(directory, "eval_summary.json"), _find(directory, "train_summary.json")
    evaluation = _read_summary(eval_path, EVAL_KEYS) if eval_path else None
    if evaluation and train_path is None:  # an eval of <run>/final: the training run is its parent
        model = Path(evaluation.get("adapter") or evaluation["model"])
        for candidate in (model / "train_summary.json", model.parent / "train_summary.json"):
            if candidate.is_file():
                train_path = candidate
    if evaluation is None and train_path is None:
        raise OpsftError(f"{directory}: no eval_summary.json or train_summary.json (run opsft eval / opsft train "
                         f"into it)")
    training = _read_summary(train_path, ("method",)) if train_path else None
    row: dict = {"run": name, "method": training["method"] if training else "base (no training)"}
    if evaluation:
        for group in ("in_domain", "out_of_domain"):
            sets = {k: v for k, v in evaluation["sets"].items() if v["group"] == group}
            row[group] = evaluation[f"{group}_accuracy"]
            row[f"{group}_ci95"] = next(iter(sets.values()))["accuracy_ci95"] if len(sets) == 1 else None
            row[f"{group}_problems"] = sum(v["problems"] for v in sets.values())
        row["sets"] = {k: v["accuracy"] for k, v in evaluation["sets"].items()}
        drift = evaluation.get("drift") or {}
        row["drift"], row["drift_sem"] = drift.get("drift"), drift.get("drift_sem")
    if training:
        row["train_tokens"], row["train_seconds"] = training.get("train_tokens"), training.get("train_seconds")
        row["train_steps"] = training.get("steps")
    return row


def run_compare(config: CompareConfig) -> dict:
    names = config.names or [Path(r).name for r in config.runs]
    for r in config.runs:
        if not Path(r).is_dir():
            raise OpsftError(f"{r}: no such directory")
    rows = [collect(Path(r), name) for r, name in zip(config.runs, names)]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    set_names = sorted({s for row in rows for s in row.get("sets", {})})
    columns = ["run", "method", "in_domain", "in_domain_ci95", "out_of_domain", "out_of_domain_ci95", "drift",
               "drift_sem", "train_tokens", "train_seconds", "train_steps"] + [f"set:{s}" for s in set_names]
    with (out / "compare.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            flat = {**row, **{f"set:{s}": v for s, v in row.get("sets", {}).items()}}
            writer.writerow(["" if flat.get(c) is None else flat[c] for c in columns])
    table = format_compare_table(rows)
    (out / "compare.md").write_text(table + "\n")
    plot_compare(rows, out / "compare.png")
    (out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nopsft compare ({out}):\n{table}", flush=True)
    return {"rows": rows}


def _accuracy(row: dict, group: str) -> str:
    value = row.get(group)
    if value is None:
        return "—"
    ci = row.get(f"{group}_ci95")
    return f"{value:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def format_compare_table(rows: list[dict]) -> str:
    lines = ["| run | method | in-domain acc (95% CI) | out-of-domain acc (95% CI) | drift ± sem | train tokens "
             "| train time (s) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        drift = "—" if row.get("drift") is None else f"{row['drift']:+.3f} ± {row['drift_sem']:.3f}"
        tokens = "—" if row.get("train_tokens") is None else f"{row['train_tokens']:,}"
        seconds = "—" if row.get("train_seconds") is None else f"{row['train_seconds']:.0f}"
        lines.append(f"| {row['run']} | {row['method']} | {_accuracy(row, 'in_domain')} | "
                     f"{_accuracy(row, 'out_of_domain')} | {drift} | {tokens} | {seconds} |")
    return "\n".join(lines)


def plot_compare(rows: list[dict], path: Path) -> None:
    """Grouped bars: in-domain and out-of-domain accuracy per run (95 % intervals where known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4), dpi=120)
    for offset, group, color in ((-0.2, "in_domain", "#1f77b4"), (0.2, "out_of_domain", "#ff7f0e")):
        values = np.array([row.get(group) if row.get(group) is not None else np.nan for row in rows])
        errors = np.array([[v - row[f"{group}_ci95"][0], row[f"{group}_ci95"][1] - v]
                           if row.get(f"{group}_ci95") and row.get(group) is not None else [0, 0]
                           for v, row in zip(values, rows)]).T.clip(min=0)
        ax.bar(x + offset, values, width=0.4, yerr=errors, capsize=3, color=color,
               label=group.replace("_", "-") + " accuracy")
    ax.set_xticks(x, [row["run"] for row in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
