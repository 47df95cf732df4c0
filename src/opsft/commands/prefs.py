"""`opsft prefs`: preference pairs from the model's own samples, for DPO and SimPO (SPEC §4).

For each prompt: sample k answers, check each against the reference, and pair a chosen answer with a
rejected one (an incorrect sample). The chosen answer, by `--chosen`:
  sample               a correct sample (prompts where none is correct give no pair);
  sample_or_reference  a correct sample, else the reference solution (default);
  reference            always the reference solution.
Up to `--pairs-per-prompt` pairs per prompt, each with distinct samples where there are enough. A
prompt with no usable pair is counted with its reason (all samples correct: nothing to reject; no
correct sample: nothing to choose), never dropped silently.

Writes into `out`: prefs.jsonl (TRL's prompt/chosen/rejected: message lists when the prompts are
messages, else text), samples.jsonl (every sample with its check), summary.json, progress.jsonl.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine.evaluation import completion_text
from ..engine.own_samples import SamplingOptions, own_samples
from ..inputs.rendering import render_plain
from ..runtime.errors import write_skipped
from ..runtime.options import option

CHOSEN_RULES = ("sample", "sample_or_reference", "reference")


@dataclass
class PrefsConfig(SamplingOptions):
    out: str = option("runs/prefs", "output directory (a rerun resumes in it)", output_dir=True)
    chosen: str = option("sample_or_reference", "what is chosen: a correct sample, else the reference "
                                                "(sample_or_reference), only samples, or the reference",
                         choices=list(CHOSEN_RULES))
    pairs_per_prompt: int = option(1, "at most this many pairs per prompt", at_least=1)


def make_pairs(samples: list[dict], reference: str, rule: str, max_pairs: int) -> tuple[list[dict], str | None]:
    """Pairs {chosen, rejected, chosen_is_reference} from one prompt's checked samples, or no pair and why."""
    right = [s["text"] for s in samples if s["correct"] and s["text"]]
    wrong = [s["text"] for s in samples if not s["correct"] and s["text"]]
    if not wrong:
        return [], "all_samples_correct" if samples and all(s["correct"] for s in samples) else "no_rejected_sample"
    from_reference = rule == "reference" or (rule == "sample_or_reference" and not right)
    if not from_reference and not right:
        return [], "no_correct_sample"
    chosen = [reference] if from_reference else right
    n = min(max_pairs, max(len(chosen), len(wrong)))
    return [{"chosen": chosen[i % len(chosen)], "rejected": wrong[i % len(wrong)],
             "chosen_is_reference": from_reference} for i in range(n)], None


def run_prefs(config: PrefsConfig) -> dict:
    own = own_samples(config, not_sampling=("chosen", "pairs_per_prompt"))
    if own.records is None:  # not the main process of `accelerate launch`: the main one writes the outputs
        return {}
    out, rendering, skipped, records, data = Path(config.out), own.rendering, own.skipped, own.records, own.data
    pairs, unusable = [], Counter()
    for record in records:
        example = own.examples[record["index"]]
        made, reason = make_pairs(record["samples"], completion_text(example), config.chosen, config.pairs_per_prompt)
        if reason:
            unusable[reason] += 1
        prompt = example.prompt
        if isinstance(prompt, list) and rendering == "plain":
            prompt = render_plain(prompt, generation_prompt=True)
        for pair in made:
            if isinstance(prompt, list):
                pair.update(chosen=[{"role": "assistant", "content": pair["chosen"]}],
                            rejected=[{"role": "assistant", "content": pair["rejected"]}])
            pairs.append({"prompt": prompt, **pair, "source_row": example.index + 1})
    with (out / "prefs.jsonl").open("w") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    with (out / "samples.jsonl").open("w") as f:
        f.writelines(json.dumps({"row": r["index"] + 1, **r}, ensure_ascii=False) + "\n" for r in records)
    write_skipped(out / "skipped.jsonl", skipped)
    samples = [s for r in records for s in r["samples"]]
    summary = {
        "run": {**asdict(config), "prompt_format": rendering},
        "rows_read": len(data.examples) + len(data.skipped),
        "prompts": len(records), "skipped_input": dict(Counter(e.reason for e in skipped)),
        "samples": len(samples), "samples_correct": sum(s["correct"] for s in samples),
        "pairs": len(pairs), "prompts_with_pairs": len({p["source_row"] for p in pairs}),
        "prompts_without_pair": dict(unusable),
        "pairs_chosen_from_reference": sum(p["chosen_is_reference"] for p in pairs),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nopsft prefs ({out}): {summary['pairs']} pairs from {summary['prompts']} prompts "
          f"({summary['samples_correct']}/{summary['samples']} samples correct); prompts without a pair: "
          f"{dict(unusable) or 'none'}", flush=True)
    return summary

