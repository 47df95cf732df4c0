"""`opsft prefs`: preference pairs from the model's own samples (engine/preference_pairs.py), as a resumable job.

Writes into `out`: prefs.jsonl (TRL's prompt/chosen/rejected: message lists when the prompts are
messages, else text), samples.jsonl (every sample with its check), summary.json, progress.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..engine.own_samples import own_samples
from ..engine.preference_pairs import CHOSEN_RULES, PrefsConfig, pair_rows
from ..runtime.errors import write_skipped

__all__ = ["CHOSEN_RULES", "PrefsConfig", "run_prefs"]


def run_prefs(config: PrefsConfig) -> dict:
    own = own_samples(config, not_sampling=("chosen", "pairs_per_prompt"))
    if own.records is None:  # not the main process of `accelerate launch`: the main one writes the outputs
        return {}
    out = Path(config.out)
    pairs, summary = pair_rows(own, config)
    with (out / "prefs.jsonl").open("w") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    with (out / "samples.jsonl").open("w") as f:
        f.writelines(json.dumps({"row": r["index"] + 1, **r}, ensure_ascii=False) + "\n" for r in own.records)
    write_skipped(out / "skipped.jsonl", own.skipped)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nopsft prefs ({out}): {summary['pairs']} pairs from {summary['prompts']} prompts "
          f"({summary['samples_correct']}/{summary['samples']} samples correct); prompts without a pair: "
          f"{summary['prompts_without_pair'] or 'none'}", flush=True)
    return summary
