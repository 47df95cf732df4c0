"""Accuracy by round of the lab's iterative methods: each round's model evaluated as the lab evaluated the final one.

The lab keeps the last round's model only; under LoRA every round's adapter stays (round-R/train/final). This script
rebuilds round r's model by merging the adapters of rounds 1..r in order, exactly as `opsft iterate` did (each
adapter's base is the previous round's merged model), checks that the rebuilt last round equals the lab's own merged
model tensor for tensor, and runs `opsft eval` on rounds 1..R-1 with the final evaluation's own settings (read from
its eval_summary.json: same suite, greedy, same token caps, same drift samples of the base). Round 0 is the lab's
base evaluation, round R the lab's final one. Writes <regime>/report/by_round.json and a plot; resumes (an evaluated
round is read back).

    .venv/bin/python docs/results/iterative_by_round.py runs/lab-iterative/weak runs/lab-iterative/strong \
        --workers 2 --plot docs/results/iterative-by-round.png
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
from pathlib import Path

ITERATIVE = "_iterative"


def merge(adapter: Path, into: Path) -> None:
    """The adapter merged into its base (the model named in its adapter_config.json), saved to `into`."""
    from opsft.inputs.models import load_model

    model, tokenizer = load_model(str(adapter), device="cpu")
    aside = into.with_name(into.name + ".new")
    shutil.rmtree(aside, ignore_errors=True)
    model.save_pretrained(aside)
    tokenizer.save_pretrained(aside)
    aside.rename(into)


def same_weights(a: Path, b: Path) -> float:
    """Largest |difference| between two saved models' tensors (inf if their names differ)."""
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if x.keys() != y.keys():
        return float("inf")
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def evaluate_rounds(run: str) -> dict:
    """Rebuild and evaluate every round of one iterative run but the last; returns accuracy and drift by round."""
    from opsft.commands.eval import EvalConfig, run_eval
    from opsft.runtime.processes import main_result

    run = Path(run)
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    last = len(rounds)
    with tempfile.TemporaryDirectory() as tmp:  # the rebuilt last round against the lab's own
        for r in range(1, last):
            if not (run / f"round-{r}" / "merged" / "config.json").exists():
                merge(run / f"round-{r}" / "train" / "final", run / f"round-{r}" / "merged")
        merge(run / f"round-{last}" / "train" / "final", Path(tmp) / "merged")
        difference = same_weights(Path(tmp) / "merged", run / f"round-{last}" / "merged")
    if difference != 0.0:
        raise SystemExit(f"{run}: round {last} rebuilt from the adapters differs from the lab's by {difference}")
    final = json.loads((run / "eval" / "eval_summary.json").read_text())
    by_round = {}
    for r in range(1, last):
        out = run / f"round-{r}" / "eval"
        summary = out / "eval_summary.json"
        if not summary.exists():
            (out / "drift").mkdir(parents=True, exist_ok=True)
            for samples in (run / "eval" / "drift").glob("base_samples*.jsonl"):
                shutil.copy(samples, out / "drift" / samples.name)
            fields = {f.name for f in dataclasses.fields(EvalConfig)}
            settings = {k: v for k, v in final["config"].items() if k in fields}
            main_result(run_eval(EvalConfig(**{**settings, "model": str(run / f"round-{r}" / "merged"),
                                               "out": str(out), "progress": False})))
        by_round[r] = json.loads(summary.read_text())
    by_round[last] = final
    return {"run": str(run), "check": "rebuilt last round equals the lab's merged model",
            "rounds": {r: {"in_domain": s["in_domain_accuracy"], "out_of_domain": s["out_of_domain_accuracy"],
                           "drift": (s.get("drift") or {}).get("drift")} for r, s in by_round.items()},
            "data": {r["round"]: {"accepted_share": r["accepted_share"], "phi_mean": r["phi_mean"]} for r in rounds}}


def summarise(regime: Path, results: list[dict]) -> dict:
    """Mean and std over seeds, per method and round; round 0 is the base, and SFT's final accuracy beside."""
    base = json.loads((regime / "eval" / "base" / "eval_summary.json").read_text())
    report = {row["method"]: row for row in json.loads((regime / "report" / "results.json").read_text())}
    methods: dict[str, list[dict]] = {}
    for result in results:
        methods.setdefault(Path(result["run"]).name.rsplit("-seed", 1)[0], []).append(result)
    table = {}
    for method, seeds in sorted(methods.items()):
        rounds = sorted({int(r) for s in seeds for r in s["rounds"]})
        table[method] = {"seeds": len(seeds), "rounds": {0: {
            "in_domain": [base["in_domain_accuracy"], 0.0], "out_of_domain": [base["out_of_domain_accuracy"], 0.0],
            "drift": [base["drift"]["drift"], 0.0]}}}
        for r in rounds:
            row = {}
            for key in ("in_domain", "out_of_domain", "drift"):
                values = [s["rounds"][r][key] for s in seeds]
                row[key] = [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]
            for key in ("accepted_share", "phi_mean"):
                values = [s["data"][r][key] for s in seeds]
                row[key] = [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]
            table[method]["rounds"][r] = row
    return {"regime": regime.name, "methods": table,
            "sft": {"in_domain": report["sft"]["in_domain"][:2], "out_of_domain": report["sft"]["out_of_domain"][:2]},
            "runs": results}


def markdown(summary: dict) -> str:
    lines = [f"{summary['regime']} regime: mean ± std over seeds (round 0 = the base; sft, final: "
             f"{summary['sft']['in_domain'][0]:.3f} in-domain, {summary['sft']['out_of_domain'][0]:.3f} out-of-domain)",
             "", "| method | round | kept share | round data phi_mean | in-domain acc | out-of-domain acc | drift |",
             "|---|---|---|---|---|---|---|"]
    for method, m in summary["methods"].items():
        for r, row in m["rounds"].items():
            kept = (f"{row['accepted_share'][0]:.3f} ± {row['accepted_share'][1]:.3f}" if "accepted_share" in row
                    else "—")
            phi = f"{row['phi_mean'][0]:+.3f} ± {row['phi_mean'][1]:.3f}" if "phi_mean" in row else "—"
            lines.append(f"| {method} | {r} | {kept} | {phi} | {row['in_domain'][0]:.3f} ± {row['in_domain'][1]:.3f} "
                         f"| {row['out_of_domain'][0]:.3f} ± {row['out_of_domain'][1]:.3f} "
                         f"| {row['drift'][0]:+.3f} ± {row['drift'][1]:.3f} |")
    return "\n".join(lines)


def plot(summaries: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("in_domain", "in-domain accuracy"), ("out_of_domain", "out-of-domain accuracy"),
            ("accepted_share", "kept share of the problems")]
    figure, axes = plt.subplots(len(summaries), len(keys), figsize=(4.2 * len(keys), 3.4 * len(summaries)),
                                squeeze=False)
    for row, summary in zip(axes, summaries):
        for axis, (key, label) in zip(row, keys):
            for method, m in summary["methods"].items():
                rounds = [r for r in m["rounds"] if key in m["rounds"][r]]
                axis.errorbar(rounds, [m["rounds"][r][key][0] for r in rounds],
                              yerr=[m["rounds"][r][key][1] for r in rounds], marker="o", capsize=3, label=method)
            if key in summary["sft"]:
                axis.axhline(summary["sft"][key][0], color="black", linestyle="--", linewidth=1, label="sft (final)")
            axis.set_title(f"{summary['regime']}: {label}")
            axis.set_xlabel("round")
            axis.set_xticks(sorted({r for m in summary["methods"].values() for r in m["rounds"]}))
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    from opsft.runtime.workers import run_each

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("regimes", nargs="+", help="a lab regime's output directory, e.g. runs/lab-iterative/weak")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--plot", default=None, help="where to write the plot (PNG)")
    args = parser.parse_args()
    summaries = []
    for regime in map(Path, args.regimes):
        runs = sorted(str(p) for p in (regime / "runs").iterdir() if ITERATIVE in p.name)
        results = list(run_each(evaluate_rounds, runs, args.workers))
        summary = summarise(regime, results)
        (regime / "report" / "by_round.json").write_text(json.dumps(summary, indent=1))
        print(markdown(summary) + "\n")
        summaries.append(summary)
    if args.plot:
        plot(summaries, args.plot)
