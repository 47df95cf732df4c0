"""`opsft rejection`: training data from the model's own correct answers (engine/rejection_sampling.py), as a
resumable job.

Writes into `out`: rejection.jsonl (the input rows with prompt/completion in their own shape, ready for
`opsft train`, plus a `rejection` provenance column), samples.jsonl (every sample with its check),
skipped.jsonl, summary.json, progress.jsonl (the resumable log).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..engine.own_samples import own_samples
from ..engine.rejection_sampling import RejectionConfig, rejection_rows
from ..runtime.errors import write_skipped

__all__ = ["RejectionConfig", "run_rejection"]


def run_rejection(config: RejectionConfig) -> dict:
    own = own_samples(config, not_sampling=("per_problem", "require_correct"))
    if own.records is None:  # not the main process of `accelerate launch`: the main one writes the outputs
        return {}
    out = Path(config.out)
    rows, summary = rejection_rows(own, config)
    with (out / "rejection.jsonl").open("w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    with (out / "samples.jsonl").open("w") as f:
        f.writelines(json.dumps({"row": r["index"] + 1, **r}, ensure_ascii=False) + "\n" for r in own.records)
    write_skipped(out / "skipped.jsonl", own.skipped)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nopsft rejection ({out}): kept {summary['kept']} answers for {summary['prompts_kept']} of "
          f"{summary['prompts']} prompts ({summary['samples_correct']}/{summary['samples']} samples correct); "
          f"not kept: {summary['samples_not_kept'] or 'none'}", flush=True)
    return summary
