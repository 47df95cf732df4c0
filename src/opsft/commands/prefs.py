"""`opsft prefs`: preference pairs from the model's own samples (engine/preference_pairs.py), as a resumable job.

Writes into `out`: prefs.jsonl (TRL's prompt/chosen/rejected: message lists when the prompts are
messages, else text), samples.jsonl (every sample with its check), summary.json, progress.jsonl.
"""

from __future__ import annotations

from ..engine.own_samples import own_samples, write_own_samples
from ..engine.preference_pairs import CHOSEN_RULES, ROW_OPTIONS, PrefsConfig, pair_rows

__all__ = ["CHOSEN_RULES", "PrefsConfig", "run_prefs"]


def run_prefs(config: PrefsConfig) -> dict:
    own = own_samples(config, not_sampling=ROW_OPTIONS)
    if own.records is None:  # not the main process of `accelerate launch`: the main one writes the outputs
        return {}
    pairs, summary = pair_rows(own, config)
    write_own_samples(config.out, "prefs.jsonl", pairs, own, summary)
    print(f"\nopsft prefs ({config.out}): {summary['pairs']} pairs from {summary['prompts']} prompts "
          f"({summary['samples_correct']}/{summary['samples']} samples correct); prompts without a pair: "
          f"{summary['prompts_without_pair'] or 'none'}", flush=True)
    return summary
