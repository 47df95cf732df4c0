"""The model's own answers to a dataset's prompts, each checked against the reference: k samples per
prompt, logged as they are made (a rerun resumes), from which `opsft prefs` builds preference pairs and
`opsft rejection` keeps the correct ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..inputs.data import Example, LoadedData, load_examples
from ..inputs.models import load_model, model_argument
from ..inputs.rendering import fitting_prompts, prompt_ids, use_prompt_format
from ..runtime.errors import DataError, nothing_left, write_skipped
from ..runtime.options import REQUIRED, Options, option
from ..runtime.resumable import MemoryLog, ShardedLog
from .evaluation import sample_and_check
from .generation import SamplingConfig

# options that change where or how a run reports, or what is made from the samples, not the samples
NOT_SAMPLING = ("out", "batch_size", "device", "overwrite", "progress", "max_length")
NOT_USED_IN_MEMORY = ("out", "overwrite")  # options of the commands that the Python API's functions do not use


@dataclass
class SamplingOptions(Options):
    model: str = option(REQUIRED, "model whose own samples are used (alias, directory or hub id)")
    data: str = option(REQUIRED, "prompts with reference solutions (as for opsft score)")
    out: str = option("runs/samples", "output directory (a rerun resumes in it)", output_dir=True)
    prompt_field: str | None = option(None, "column holding the question")
    completion_field: str | None = option(None, "column holding the reference solution")
    messages_field: str | None = option(None, "column holding a message list")
    answer_field: str | None = option(None, "column holding the reference final answer")
    limit: int | None = option(None, "use the first N prompts", at_least=1)
    skip_invalid: bool = option(False, "skip bad rows (counted by reason) instead of stopping at the first")
    prompt_format: str | None = option(None, "chat or plain (required for a model with no chat template)",
                                       choices=["chat", "plain"])
    k: int = option(4, "samples per prompt", at_least=1)
    temperature: float = option(1.0, "sampling temperature (> 0: the samples must differ)", above=0)
    top_p: float = option(1.0, "nucleus kept before sampling", above=0, at_most=1)
    max_new_tokens: int = option(512, "length cap of a sample", at_least=1)
    max_length: int = option(2048, "token limit of prompt + sample (a longer prompt is an error, or skipped)",
                             at_least=2)
    repeat_window: int = option(0, "stop a sample when a window of this many tokens (0: never) ...", at_least=0)
    repeat_count: int = option(5, "... has occurred this many times", at_least=2)
    seed: int = option(0, "sampling seed", at_least=0)
    batch_size: int = option(32, "sequences generated together", at_least=1)
    device: str | None = option(None, "cuda / cpu (default: cuda when available)", device=True)
    overwrite: bool = option(False, "discard an earlier run in --out instead of resuming")
    progress: bool = option(True, "show progress bars")


@dataclass
class OwnSamples:
    data: LoadedData
    examples: dict[int, Example]  # by index: every row read that was loaded
    rendering: str  # how message prompts were rendered: chat or plain
    records: list[dict] | None  # one per prompt sampled, in index order: {index, reference, samples: [...]};
    # None in the processes of `accelerate launch` other than the main one (which has them all)
    skipped: list[DataError]  # rows left out, loading and prompt length together


def own_samples(config: SamplingOptions, *, not_sampling: tuple[str, ...] = (), dataset=None, model=None,
                tokenizer=None) -> OwnSamples:
    """Sample and check config.k answers per prompt into out/progress.jsonl (resuming what it holds; under
    `accelerate launch` each process samples its share into its own log, resumable.ShardedLog). The log
    records every option but those in NOT_SAMPLING and `not_sampling` (what the command makes of the
    samples), plus the rendered prompts: a rerun with other sampling settings is refused.

    The Python API passes the rows (`dataset`, in place of config.data) and a loaded `model` with its `tokenizer`
    (in place of config.model): then the samples are kept in memory and nothing is written."""
    in_memory = dataset is not None
    data = load_examples(dataset if in_memory else config.data, prompt_field=config.prompt_field,
                         completion_field=config.completion_field, messages_field=config.messages_field,
                         answer_field=config.answer_field, limit=config.limit, skip_invalid=config.skip_invalid)
    if model is None:
        model, tokenizer = load_model(config.model, device=config.device)
    rendering = use_prompt_format(tokenizer, config.prompt_format, config.model,
                                  any(isinstance(e.prompt, list) for e in data.examples))
    skipped = list(data.skipped)
    prompts = fitting_prompts(data.examples, lambda e: prompt_ids(e.prompt, tokenizer), config.max_new_tokens,
                              config.max_length, source=data.source, skip_invalid=config.skip_invalid,
                              skipped=skipped)
    examples = [e for e in data.examples if e.index in prompts]
    if not examples:
        raise nothing_left(data.source, "prompt left to sample", skipped)
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_SAMPLING + not_sampling}
    log = MemoryLog() if in_memory else ShardedLog(
        config.out, {**settings, "prompt_format": rendering, "prompts": {str(i): p for i, p in prompts.items()}},
        overwrite=config.overwrite)
    sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p,
                              max_new_tokens=config.max_new_tokens, repeat_window=config.repeat_window,
                              repeat_count=config.repeat_count)
    sample_and_check(model, tokenizer, examples, prompts, sampling, k=config.k, seed=config.seed,
                     batch_size=config.batch_size, log=log, progress=config.progress, desc="sampling")
    return OwnSamples(data, {e.index: e for e in data.examples}, rendering, log.merged(), skipped)



def own_samples_dataset(config_class, make_rows, model, dataset, *, processing_class, options: dict,
                        not_sampling: tuple[str, ...], what: str):
    """A Python API function over the model's own samples: `options` checked as the command's (config_class), the
    samples drawn in memory, `make_rows(own, config)` -> (rows, summary); returns (datasets.Dataset, summary)."""
    from datasets import Dataset

    model, tokenizer, name = model_argument(model, processing_class, device=options.get("device"), what=what)
    config = config_class(model=name, data=dataset if isinstance(dataset, str) else "the dataset", **options)
    own = own_samples(config, not_sampling=not_sampling, dataset=dataset, model=model, tokenizer=tokenizer)
    rows, summary = make_rows(own, config)
    summary["run"] = {k: v for k, v in summary["run"].items() if k not in NOT_USED_IN_MEMORY}
    return Dataset.from_list(rows), summary


def write_own_samples(out: str | Path, rows_file: str, rows: list[dict], own: OwnSamples, summary: dict) -> None:
    """A command's files: the rows it made, every sample with its check (samples.jsonl), skipped.jsonl, summary.json."""
    out = Path(out)
    with (out / rows_file).open("w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    with (out / "samples.jsonl").open("w") as f:
        f.writelines(json.dumps({"row": r["index"] + 1, **r}, ensure_ascii=False) + "\n" for r in own.records)
    write_skipped(out / "skipped.jsonl", own.skipped)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
