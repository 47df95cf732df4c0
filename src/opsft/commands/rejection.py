"""`opsft rejection`: training data from the model's own correct answers (engine/rejection_sampling.py), as a
resumable job.

Writes into `out`: rejection.jsonl (the input rows with prompt/completion in their own shape, ready for
`opsft train`, plus a `rejection` provenance column), samples.jsonl (every sample with its check),
skipped.jsonl, summary.json, progress.jsonl (the resumable log).
"""

from __future__ import annotations

from ..engine.own_samples import own_samples, write_own_samples
from ..engine.rejection_sampling import ROW_OPTIONS, RejectionConfig, rejection_rows

__all__ = ["RejectionConfig", "run_rejection"]


def run_rejection(config: RejectionConfig) -> dict:
    own = own_samples(config, not_sampling=ROW_OPTIONS)
    if own.records is None:  # not the main process of `accelerate launch`: the main one writes the outputs
        return {}
    rows, summary = rejection_rows(own, config)
    write_own_samples(config.out, "rejection.jsonl", rows, own, summary)
    print(f"\nopsft rejection ({config.out}): kept {summary['kept']} answers for {summary['prompts_kept']} of "
          f"{summary['prompts']} prompts ({summary['samples_correct']}/{summary['samples']} samples correct); "
          f"not kept: {summary['samples_not_kept'] or 'none'}", flush=True)
    return summary
