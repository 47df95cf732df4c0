"""Two runs of the same lab side by side, per regime and method: in-domain and out-of-domain accuracy (means over
the seeds) and the learning rate each chose, from each run's report/results.json.

    python3 docs/results/compare_runs.py runs/lab-results runs/lab-results-workers
"""
import json
import sys
from pathlib import Path


def rows(run: Path, regime: str) -> dict:
    return {row["method"]: row for row in json.loads((run / regime / "report" / "results.json").read_text())}


if __name__ == "__main__":
    first, second = Path(sys.argv[1]), Path(sys.argv[2])
    for regime in ("weak", "strong"):
        a, b = rows(first, regime), rows(second, regime)
        differ = 0
        print(f"\n{regime}: method | in-domain (first / second) | out-of-domain | learning rate")
        methods = list(a) + [m for m in b if m not in a]
        for method in methods:
            if method not in a or method not in b:
                print(f"{method:20s} only in the {'first' if method in a else 'second'} run")
                differ += 1
                continue
            x, y = a[method], b[method]
            pairs = [(x["in_domain"][0], y["in_domain"][0]), (x["out_of_domain"][0], y["out_of_domain"][0])]
            same = all(f"{p:.3f}" == f"{q:.3f}" for p, q in pairs) and x["learning_rate"] == y["learning_rate"]
            differ += not same
            print(f"{method:20s} {pairs[0][0]:.3f} / {pairs[0][1]:.3f}   {pairs[1][0]:.3f} / {pairs[1][1]:.3f}   "
                  f"{x['learning_rate']} / {y['learning_rate']}{'' if same else '   <- differs'}")
        print(f"{differ} of {len(methods)} rows differ (to 3 decimals, or in the learning rate)")
