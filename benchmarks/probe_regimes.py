"""How the lab's two regimes were chosen: for candidate training sets, their phi_mean under the base model (DDT,
how close the solutions are to the model's own distribution) and the base model's greedy accuracy on the task.

    python benchmarks/probe_regimes.py [--model smollm2-135m] [--out runs/probe-regimes] [--size 64]

The weak regime wants phi_mean well below 0; the strong one phi_mean near or above 0 (>= -0.1) and a base
accuracy well above 0 with room to learn. Prints a markdown table (docs/lab.md records it). Each candidate's
training problems are seed 0, its accuracy is measured on other problems (seed 1001), as in the lab.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from opsft.commands.eval import EvalConfig, run_eval
from opsft.commands.score import ScoreConfig, run_score
from opsft.lab.study import CHAIN, LETTERS, _gym_rows

TASKS = {  # name -> (reasoning-gym task, query)
    "chain_sum, 3 terms of 1 digit": ("chain_sum", CHAIN.format(t=3, d0=1, d1=1)),
    "chain_sum, 2 terms of 1 digit": ("chain_sum", CHAIN.format(t=2, d0=1, d1=1)),
    "chain_sum, 2 terms of 1-2 digits": ("chain_sum", CHAIN.format(t=2, d0=1, d1=2)),
    "chain_sum, 2 terms of 2 digits": ("chain_sum", CHAIN.format(t=2, d0=2, d1=2)),
    "letter_counting, 3-5 words": ("letter_counting", LETTERS),
}
CANDIDATES = [  # (task, rationale of the training solutions)
    ("chain_sum, 3 terms of 1 digit", "running_sums"), ("chain_sum, 3 terms of 1 digit", "task"),
    ("chain_sum, 3 terms of 1 digit", "answer_sentence"), ("chain_sum, 2 terms of 1 digit", "task"),
    ("chain_sum, 2 terms of 1 digit", "answer_sentence"), ("chain_sum, 2 terms of 1-2 digits", "task"),
    ("chain_sum, 2 terms of 1-2 digits", "answer_sentence"), ("chain_sum, 2 terms of 2 digits", "answer_sentence"),
    ("letter_counting, 3-5 words", "task"), ("letter_counting, 3-5 words", "answer_sentence"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="runs/probe-regimes")
    parser.add_argument("--size", type=int, default=64, help="training problems scored, test problems evaluated")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    accuracy = {}
    for name, (task, query) in TASKS.items():
        slug = name.replace(",", "").replace(" ", "_")
        summary = run_eval(EvalConfig(model=args.model, data=f"gym:{task}?size={args.size}&seed=1001&{query}",
                                      out=str(out / f"eval-{slug}"), max_new_tokens=48, drift_limit=None,
                                      progress=False))
        accuracy[name] = summary["in_domain_accuracy"]
    lines = ["| task | training solutions | example | phi_mean ± sem | base accuracy |", "|---|---|---|---|---|"]
    for name, rationale in CANDIDATES:
        task, query = TASKS[name]
        rows = _gym_rows(f"gym:{task}?size={args.size}&seed=0&{query}", rationale)
        slug = f"{name.replace(',', '').replace(' ', '_')}-{rationale}"
        data = out / f"{slug}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        phi = run_score(ScoreConfig(model=args.model, data=str(data), out=str(out / f"score-{slug}"),
                                    prompt_field="question", completion_field="solution", progress=False))["phi_mean"]
        example = rows[0]["solution"].replace("\n", "\\n")
        lines.append(f"| {name} | {rationale} | `{example}` | {phi['mean']:+.3f} ± {phi['sem']:.3f} | "
                     f"{accuracy[name]:.3f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
