"""Preference pairs from the model's own samples, for DPO and SimPO (SPEC §4; `opsft.preference_pairs`, and
`opsft prefs` over it).

For each prompt: sample k answers, check each against the reference, and pair a chosen answer with a
rejected one (an incorrect sample). The chosen answer, by `--chosen`:
  sample               a correct sample (prompts where none is correct give no pair);
  sample_or_reference  a correct sample, else the reference solution (default);
  reference            always the reference solution.
Up to `--pairs-per-prompt` pairs per prompt, each with distinct samples where there are enough. A
prompt with no usable pair is counted with its reason (all samples correct: nothing to reject; no
correct sample: nothing to choose), never dropped silently.

The pairs are TRL's prompt/chosen/rejected: message lists when the prompts are messages, else text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from ..inputs.rendering import render_plain
from ..runtime.options import option
from .evaluation import completion_text
from .own_samples import OwnSamples, SamplingOptions, own_samples_dataset

ROW_OPTIONS = ("chosen", "pairs_per_prompt")  # what is made of the samples, not how they are drawn

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


def preference_pairs(model, dataset, *, processing_class=None, **options):
    """Preference pairs from the model's own samples, as `opsft prefs` makes them; returns (pairs, summary): a
    datasets.Dataset of prompt/chosen/rejected (with chosen_is_reference and source_row), ready for TRL's
    DPOTrainer, and the command's summary.

    `model`: a name, path or alias, or a loaded model with its `processing_class`. `dataset`: a datasets.Dataset,
    a list of rows or a file, in any shape `opsft score` reads. `options`: opsft prefs's options by their Python
    names and defaults (k=4, chosen="sample_or_reference", pairs_per_prompt=1, temperature=1.0, ...)."""
    return own_samples_dataset(PrefsConfig, pair_rows, model, dataset, processing_class=processing_class,
                               options=options, not_sampling=ROW_OPTIONS, what="opsft.preference_pairs")


def pair_rows(own: OwnSamples, config: PrefsConfig) -> tuple[list[dict], dict]:
    """The pairs of every prompt and the summary, every prompt without a pair counted with its reason."""
    rendering, records = own.rendering, own.records
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
    samples = [s for r in records for s in r["samples"]]
    summary = {
        "run": {**asdict(config), "prompt_format": rendering},
        "rows_read": len(own.data.examples) + len(own.data.skipped),
        "prompts": len(records), "skipped_input": dict(Counter(e.reason for e in own.skipped)),
        "samples": len(samples), "samples_correct": sum(s["correct"] for s in samples),
        "pairs": len(pairs), "prompts_with_pairs": len({p["source_row"] for p in pairs}),
        "prompts_without_pair": dict(unusable),
        "pairs_chosen_from_reference": sum(p["chosen_is_reference"] for p in pairs),
    }
    return pairs, summary
