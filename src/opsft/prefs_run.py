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

from .errors import nothing_left, write_skipped
from .evaluation import completion_text, sample_and_check
from .generation import SamplingConfig
from .options import REQUIRED, Options, option
from .data import load_examples
from .models import load_model
from .rendering import fitting_prompts, prompt_ids, render_plain, use_prompt_format
from .resumable import ResultLog

CHOSEN_RULES = ("sample", "sample_or_reference", "reference")


@dataclass
class PrefsConfig(Options):
    model: str = option(REQUIRED, "model whose own samples are paired (alias, directory or hub id)")
    data: str = option(REQUIRED, "prompts with reference solutions (as for opsft score)")
    out: str = option("runs/prefs", "output directory (a rerun resumes in it)", output_dir=True)
    prompt_field: str | None = option(None, "column holding the question")
    completion_field: str | None = option(None, "column holding the reference solution")
    messages_field: str | None = option(None, "column holding a message list")
    answer_field: str | None = option(None, "column holding the reference final answer")
    limit: int | None = option(None, "use the first N prompts", at_least=1)
    skip_invalid: bool = option(False, "skip bad rows (counted by reason) instead of stopping at the first")
    prompt_format: str | None = option(None, "chat or plain (required for a model with no chat template)",
                                       choices=["chat", "plain"])
    k: int = option(4, "samples per prompt", at_least=1)
    temperature: float = option(1.0, "sampling temperature (> 0: pairs need different samples)", above=0)
    top_p: float = option(1.0, "nucleus kept before sampling", above=0, at_most=1)
    max_new_tokens: int = option(512, "length cap of a sample", at_least=1)
    max_length: int = option(2048, "token limit of prompt + sample (a longer prompt is an error, or skipped)",
                             at_least=2)
    repeat_window: int = option(0, "stop a sample when a window of this many tokens (0: never) ...", at_least=0)
    repeat_count: int = option(5, "... has occurred this many times", at_least=2)
    chosen: str = option("sample_or_reference", "what is chosen: a correct sample, else the reference "
                                                "(sample_or_reference), only samples, or the reference",
                         choices=list(CHOSEN_RULES))
    pairs_per_prompt: int = option(1, "at most this many pairs per prompt", at_least=1)
    seed: int = option(0, "sampling seed", at_least=0)
    batch_size: int = option(32, "sequences generated together", at_least=1)
    device: str | None = option(None, "cuda / cpu (default: cuda when available)", device=True)
    overwrite: bool = option(False, "discard an earlier run in --out instead of resuming")
    progress: bool = option(True, "show progress bars")


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
    data = load_examples(config.data, prompt_field=config.prompt_field, completion_field=config.completion_field,
                         messages_field=config.messages_field, answer_field=config.answer_field,
                         limit=config.limit, skip_invalid=config.skip_invalid)
    out = Path(config.out)
    model, tokenizer = load_model(config.model, device=config.device)
    rendering = use_prompt_format(tokenizer, config.prompt_format, config.model,
                                  any(isinstance(e.prompt, list) for e in data.examples))
    skipped = list(data.skipped)
    prompts = fitting_prompts(data.examples, lambda e: prompt_ids(e.prompt, tokenizer), config.max_new_tokens,
                              config.max_length, source=config.data, skip_invalid=config.skip_invalid,
                              skipped=skipped)
    examples = [e for e in data.examples if e.index in prompts]
    if not examples:
        raise nothing_left(config.data, "prompt left to sample", skipped)
    settings = {k: v for k, v in asdict(config).items()
                if k not in ("out", "batch_size", "device", "overwrite", "progress", "chosen", "pairs_per_prompt",
                             "max_length")}  # the prompts kept are in the settings
    log = ResultLog(out / "progress.jsonl", {**settings, "prompt_format": rendering,
                                             "prompts": {str(i): p for i, p in prompts.items()}},
                    overwrite=config.overwrite)
    sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p,
                              max_new_tokens=config.max_new_tokens, repeat_window=config.repeat_window,
                              repeat_count=config.repeat_count)
    sample_and_check(model, tokenizer, examples, prompts, sampling, k=config.k, seed=config.seed,
                     batch_size=config.batch_size, log=log, progress=config.progress, desc="sampling")

    by_index = {e.index: e for e in data.examples}
    pairs, unusable = [], Counter()
    for record in log.records():
        example = by_index[record["index"]]
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
        f.writelines(json.dumps({"row": r["index"] + 1, **r}, ensure_ascii=False) + "\n" for r in log.records())
    write_skipped(out / "skipped.jsonl", skipped)
    samples = [s for r in log.records() for s in r["samples"]]
    summary = {
        "run": {**asdict(config), "prompt_format": rendering},
        "rows_read": len(data.examples) + len(data.skipped),
        "prompts": len(log.records()), "skipped_input": dict(Counter(e.reason for e in skipped)),
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

