"""`opsft rejection`: training data from the model's own correct answers (rejection sampling).

For each prompt: sample k answers and check each against the reference (engine/own_samples.py, shared with
`opsft prefs`), then keep the correct ones, at most `--per-problem` distinct answers per prompt, each
one that ended on its own (EOS). This is the DFT paper's offline-RL setting and the IDFT paper's RJ
runs: SFT on such data is on-policy by construction. Every sample not kept and every prompt left with
no answer is counted with its reason.

Writes into `out`: rejection.jsonl (the input rows with prompt/completion in their own shape, ready for
`opsft train`, plus a `rejection` provenance column), samples.jsonl (every sample with its check),
skipped.jsonl, summary.json, progress.jsonl (the resumable log).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine.own_samples import SamplingOptions, own_samples
from ..inputs.data import completion_like
from ..runtime.errors import write_skipped
from ..runtime.options import option


@dataclass
class RejectionConfig(SamplingOptions):
    out: str = option("runs/rejection", "output directory (a rerun resumes in it)", output_dir=True)
    per_problem: int = option(1, "keep at most this many distinct correct answers per prompt (<= --k)", at_least=1)
    require_correct: bool = option(True, "keep only answers the scorer marks correct (--no-require-correct keeps "
                                         "every finished answer: self-distillation, an ablation)")

    def rules(self):
        return [(self.per_problem <= self.k, f"--per-problem ({self.per_problem}) must be <= --k ({self.k}): "
                                             f"a prompt has only k samples")]


def keep_correct(samples: list[dict], per_problem: int, require_correct: bool = True
                 ) -> tuple[list[tuple[int, str]], Counter]:
    """(sample number, text) of the first `per_problem` distinct correct samples that ended on EOS, and the
    reasons the other samples were not kept."""
    kept, dropped, seen = [], Counter(), set()
    for j, sample in enumerate(samples):
        if not sample["text"]:
            dropped["empty_sample"] += 1
        elif require_correct and not sample["correct"]:
            dropped["wrong_answer"] += 1
        elif sample["finish_reason"] != "eos":
            dropped[f"finished_by_{sample['finish_reason']}"] += 1
        elif sample["text"] in seen:
            dropped["duplicate"] += 1
        elif len(kept) >= per_problem:
            dropped["over_per_problem"] += 1
        else:
            kept.append((j, sample["text"]))
            seen.add(sample["text"])
    return kept, dropped


def run_rejection(config: RejectionConfig) -> dict:
    own = own_samples(config, not_sampling=("per_problem", "require_correct"))
    if own.records is None:  # not the main process of `accelerate launch`: the main one writes the outputs
        return {}
    out, rows, dropped, unanswered = Path(config.out), [], Counter(), 0
    for record in own.records:
        example = own.examples[record["index"]]
        kept, why = keep_correct(record["samples"], config.per_problem, config.require_correct)
        dropped.update(why)
        unanswered += not kept
        for j, text in kept:
            rows.append({**example.row, "prompt": example.prompt, "completion": completion_like(example, text),
                         "rejection": {"source_row": example.index + 1, "sample": j, "model": config.model,
                                       "temperature": config.temperature, "answer": record["samples"][j]["answer"],
                                       "correct": record["samples"][j]["correct"]}})
    with (out / "rejection.jsonl").open("w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    with (out / "samples.jsonl").open("w") as f:
        f.writelines(json.dumps({"row": r["index"] + 1, **r}, ensure_ascii=False) + "\n" for r in own.records)
    write_skipped(out / "skipped.jsonl", own.skipped)
    samples = [s for r in own.records for s in r["samples"]]
    summary = {
        "run": {**asdict(config), "prompt_format": own.rendering},
        "rows_read": len(own.data.examples) + len(own.data.skipped),
        "prompts": len(own.records), "skipped_input": dict(Counter(e.reason for e in own.skipped)),
        "samples": len(samples), "samples_correct": sum(s["correct"] for s in samples),
        "kept": len(rows), "prompts_kept": len(own.records) - unanswered,
        "prompts_without_answer": unanswered, "samples_not_kept": dict(dropped),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nopsft rejection ({out}): kept {summary['kept']} answers for {summary['prompts_kept']} of "
          f"{summary['prompts']} prompts ({summary['samples_correct']}/{summary['samples']} samples correct); "
          f"not kept: {dict(dropped) or 'none'}", flush=True)
    return summary
