"""`opsft realign`: Hinted Decoding rewrites of a dataset's reference solutions (engine/realignment.py), as a
resumable job: decoded rows are logged as they finish (progress.jsonl), and a rerun continues where it stopped.
Under `accelerate launch` each process realigns its share of the examples (resumable.ShardedLog).

Writes into `out`: realigned.jsonl (prompt/completion in the input's shape, ready for `opsft train`,
plus a `realign` provenance column), dropped.jsonl, skipped.jsonl, summary.json, phi_before_after.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..engine.realignment import HINT_TEMPLATE, RealignConfig, hinted_prompt, realign_examples, write_analyses
from ..inputs.prepare import prepare
from ..inputs.rendering import fingerprint
from ..runtime.errors import write_skipped
from ..runtime.resumable import ShardedLog
from .report import plot_before_after

__all__ = ["HINT_TEMPLATE", "RealignConfig", "hinted_prompt", "run_realign", "write_analyses"]


def run_realign(config: RealignConfig) -> dict:
    out = Path(config.out)
    prepared = prepare(config)  # the original solutions, tokenized and checked as training would see them
    settings = {**config.settings(), "inputs_sha256": fingerprint(prepared.tokenized)}
    result = realign_examples(prepared, config, lambda: ShardedLog(out, settings, overwrite=config.overwrite))
    if result is None:  # not the main process
        return {}
    with (out / "realigned.jsonl").open("w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in result.kept)
    with (out / "dropped.jsonl").open("w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in result.dropped)
    write_skipped(out / "skipped.jsonl", result.skipped)
    summary, records = result.summary, result.records
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_before_after([r["phi_mean_original"] for r in records],
                      [r["phi_mean_rewrite"] for r in records if r["phi_mean_rewrite"] is not None],
                      out / "phi_before_after.png")
    print(f"\nopsft realign ({out}): kept {summary['kept']} of {summary['decoded']} "
          f"({100 * summary['kept_fraction']:.0f}%); dropped {summary['dropped'] or 'none'}; "
          f"phi_mean original {summary['phi_mean_original']['mean']:+.3f} -> rewrite "
          f"{summary['phi_mean_rewrite']['mean']:+.3f} (median {summary['phi_mean_original']['median']:+.3f} -> "
          f"{summary['phi_mean_rewrite']['median']:+.3f}); {summary['throughput']['tokens_per_second']} tokens/s",
          flush=True)
    return summary
