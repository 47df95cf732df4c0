"""Rejection sampling: training data from the model's own correct answers (`opsft.rejection_samples`, and
`opsft rejection` over it).

For each prompt: sample k answers and check each against the reference (engine/own_samples.py, shared with
`opsft prefs`), then keep the correct ones, at most `--per-problem` distinct answers per prompt, each
one that ended on its own (EOS). This is the DFT paper's offline-RL setting and the IDFT paper's RJ
runs: SFT on such data is on-policy by construction. Every sample not kept and every prompt left with
no answer is counted with its reason.

The rows kept are the input rows with prompt/completion in their own shape, ready for training, plus a
`rejection` provenance column.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from ..inputs.data import completion_like
from ..runtime.options import option
from .own_samples import OwnSamples, SamplingOptions, own_samples_dataset

ROW_OPTIONS = ("per_problem", "require_correct")  # what is made of the samples, not how they are drawn


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


def rejection_samples(model, dataset, *, processing_class=None, **options):
    """The model's own correct answers to the dataset's prompts, as `opsft rejection` keeps them; returns
    (rows, summary): a datasets.Dataset of the kept rows and the command's summary.

    `model`: a name, path or alias, or a loaded model with its `processing_class`. `dataset`: a datasets.Dataset,
    a list of rows or a file, in any shape `opsft score` reads. `options`: opsft rejection's options by their
    Python names and defaults (k=4, per_problem=1, temperature=1.0, max_new_tokens=512, prompt_field, ...)."""
    return own_samples_dataset(RejectionConfig, rejection_rows, model, dataset, processing_class=processing_class,
                               options=options, not_sampling=ROW_OPTIONS, what="opsft.rejection_samples")


def rejection_rows(own: OwnSamples, config: RejectionConfig) -> tuple[list[dict], dict]:
    """The kept rows (each with its `rejection` provenance) and the summary, every sample not kept counted."""
    rows, dropped, unanswered = [], Counter(), 0
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
    samples = [s for r in own.records for s in r["samples"]]
    summary = {
        "run": {**asdict(config), "prompt_format": own.rendering},
        "rows_read": len(own.data.examples) + len(own.data.skipped),
        "prompts": len(own.records), "skipped_input": dict(Counter(e.reason for e in own.skipped)),
        "samples": len(samples), "samples_correct": sum(s["correct"] for s in samples),
        "kept": len(rows), "prompts_kept": len(own.records) - unanswered,
        "prompts_without_answer": unanswered, "samples_not_kept": dict(dropped),
    }
    return rows, summary
