"""`opsft eval`: generation-based accuracy of a model on in-domain and out-of-domain sets, and its drift.

A model is a base model, a full fine-tune, or a LoRA adapter (merged into its base for inference). The
sets come from `--data` (one in-domain set) or a suite YAML file:

    in_domain:
      gsm: "gym:gsm_symbolic?size=100&seed=1"
    out_of_domain:
      arithmetic: {data: "gym:basic_arithmetic?size=100&seed=1", max_new_tokens: 64}
      mine: {data: my_test.jsonl, prompt_field: question, completion_field: answer}
    drift: {data: "gym:gsm_symbolic?size=32&seed=7", base: smollm2-135m}   # also prompt_field, ..., limit

Each set: k samples per problem (greedy when temperature is 0), every answer checked (the task's scorer
for reasoning-gym, math-verify otherwise), per-problem outputs saved for auditing, accuracy (avg@k) and
pass@k with 95 % intervals (engine/evaluation.py). Drift (engine/drift.py): phi_mean of the base model's own samples
under the evaluated model. Resumable: finished problems are logged and never generated twice. Under
`accelerate launch` each process generates its share of every set and of the drift samples (index %
processes, resumable.ShardedLog); the main process merges them, scores the drift samples and reports.

Writes into `out`: sets/<name>/samples.jsonl (+ progress.jsonl, or one progress-R-of-W.jsonl per process),
drift/ (base samples, scores),
eval_summary.json, eval_summary.md.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine.drift import drift_of, sample_base
from ..engine.evaluation import evaluate_examples, greedy_rule
from ..engine.generation import SamplingConfig
from ..inputs.data import LoadedData, load_examples
from ..inputs.models import adapter_base, load_model
from ..inputs.rendering import fitting_prompts, prompt_ids, use_prompt_format
from ..runtime.errors import OpsftError, nothing_left, write_skipped
from ..runtime.options import REQUIRED, Options, option, read_yaml, typed
from ..runtime.resumable import ShardedLog

GROUPS = ("in_domain", "out_of_domain")
SET_OPTIONS = ("prompt_field", "completion_field", "messages_field", "answer_field", "limit", "k", "temperature",
               "top_p", "max_new_tokens")
DRIFT_OPTIONS = ("data", "base", "prompt_field", "completion_field", "messages_field", "limit")


@dataclass
class EvalConfig(Options):
    model: str = option(REQUIRED, "model: alias, directory (a full fine-tune or a LoRA adapter) or hub id")
    data: str | None = option(None, "one in-domain evaluation set (as for opsft score); or use --suite")
    suite: str | None = option(None, "YAML file naming in_domain / out_of_domain sets (and drift)")
    adapter: str | None = option(None, "a LoRA adapter directory to merge into --model")
    out: str = option("runs/eval", "output directory (a rerun resumes in it)", output_dir=True)
    prompt_field: str | None = option(None, "column holding the question")
    completion_field: str | None = option(None, "column holding the reference solution or answer")
    messages_field: str | None = option(None, "column holding a message list")
    answer_field: str | None = option(None, "column holding the reference final answer (default: extracted "
                                              "from the solution)")
    limit: int | None = option(None, "evaluate the first N problems of each set", at_least=1)
    skip_invalid: bool = option(False, "skip bad rows (counted by reason) instead of stopping at the first")
    prompt_format: str | None = option(None, "how message prompts are rendered: chat (the model's template) or "
                                              "plain ('User: ...'); required for a model with no chat template",
                                       choices=["chat", "plain"])
    k: int = option(1, "samples per problem: accuracy is avg@k, and pass@k is reported", at_least=1)
    temperature: float = option(0.0, "sampling temperature (0: greedy, needs k = 1)", at_least=0)
    top_p: float = option(1.0, "nucleus kept before sampling", above=0, at_most=1)
    max_new_tokens: int = option(512, "length cap of an answer", at_least=1)
    max_length: int = option(2048, "token limit of prompt + answer", at_least=2)
    repeat_window: int = option(0, "stop an answer when a window of this many tokens (0: never) ...", at_least=0)
    repeat_count: int = option(5, "... has occurred this many times", at_least=2)
    seed: int = option(0, "sampling seed (each problem and sample draws from its own generator)", at_least=0)
    batch_size: int = option(32, "sequences generated together", at_least=1)
    drift_data: str | None = option(None, "prompts for the drift measure (their completions are not used)")
    drift_base: str | None = option(None, "base model for the drift measure (default: the adapter's base)")
    drift_samples: int = option(1, "base samples per drift prompt", at_least=1)
    drift_limit: int | None = option(64, "drift prompts used (the first N)", at_least=1)
    drift_max_new_tokens: int = option(256, "length cap of a base sample", at_least=1)
    device: str | None = option(None, "cuda / cpu (default: cuda when available)", device=True)
    overwrite: bool = option(False, "discard an earlier run in --out instead of resuming")
    progress: bool = option(True, "show progress bars")

    def rules(self):
        greedy_ok, greedy_message = greedy_rule(self.temperature, self.k, "--temperature", "--k")
        return [(greedy_ok or self.suite is not None, greedy_message),  # a suite's sets are checked one by one
                (self.data is None or self.suite is None, "give --data or --suite, not both")]


@dataclass
class EvalSet(Options):
    name: str
    group: str
    data: str
    prompt_field: str | None = None
    completion_field: str | None = None
    messages_field: str | None = None
    answer_field: str | None = None
    limit: int | None = option(None, at_least=1)
    k: int = option(1, at_least=1)
    temperature: float = option(0.0, at_least=0)
    top_p: float = option(1.0, above=0, at_most=1)
    max_new_tokens: int = option(512, at_least=1)

    def flag(self, name: str) -> str:
        return name  # a suite's key

    def rules(self):
        return [greedy_rule(self.temperature, self.k, "temperature", "k")]

    def sampling(self, config: EvalConfig) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                              repeat_window=config.repeat_window, repeat_count=config.repeat_count)


DRIFT_TYPES = {"data": str, "base": str, "prompt_field": str | None, "completion_field": str | None,
               "messages_field": str | None, "limit": int | None}


def eval_sets(config: EvalConfig) -> tuple[list[EvalSet], dict]:
    """The sets to evaluate (each with its options: the set's own, else the command's) and the suite's drift
    section; every problem with the suite is reported here, naming the suite and the set."""
    defaults = {name: getattr(config, name) for name in SET_OPTIONS}
    if config.data is not None:
        sets = [EvalSet(_set_name(config.data), "in_domain", config.data, **defaults)]
        return sets, {}
    if config.suite is None:
        raise OpsftError("give --data (one evaluation set) or --suite (a YAML file of sets)")
    path = Path(config.suite)
    return suite_sets(read_yaml(path, "--suite") or {}, path, defaults)


def suite_sets(suite, path: Path, defaults: dict | None = None, *, label: str | None = None
               ) -> tuple[list[EvalSet], dict]:
    """A suite's sets and drift section, checked; `path` is where the suite file is (or will be) written:
    relative data files are found as given or beside it. `defaults`: the set options not given in the suite
    (default: opsft eval's defaults). `label`: how errors name the suite (default: its path)."""
    if defaults is None:
        defaults = {f.name: f.default for f in dataclasses.fields(EvalConfig) if f.name in SET_OPTIONS}
    path, suite_path = label or path, path
    unknown = set(suite) - {*GROUPS, "drift"} if isinstance(suite, dict) else {"(not a mapping)"}
    if unknown:
        raise OpsftError(f"{path}: unknown sections {sorted(map(str, unknown))} (use {', '.join(GROUPS)}, drift)")
    sets = []
    for group in GROUPS:
        entries = suite.get(group) or {}
        if not isinstance(entries, dict):
            raise OpsftError(f"{path}: {group}: expected a mapping of set name: data (or {{data: ..., options}})")
        for name, entry in entries.items():
            entry = {"data": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or not isinstance(entry.get("data"), str):
                raise OpsftError(f"{path}: {group}.{name}: needs 'data' (a file or data source)")
            bad = set(entry) - {"data", *SET_OPTIONS}
            if bad:
                raise OpsftError(f"{path}: {group}.{name}: unknown options {sorted(map(str, bad))} "
                                 f"(a set takes {', '.join(SET_OPTIONS)})")
            entry = {**entry, "data": _beside(suite_path, entry["data"], f"{path}: {group}.{name}")}
            try:
                sets.append(EvalSet(str(name), group, **{**defaults, **entry}))
            except OpsftError as e:
                raise OpsftError(f"{path}: {group}.{name}: {e}") from None
    if not sets:
        raise OpsftError(f"{path}: names no evaluation set (add {GROUPS[0]}: or {GROUPS[1]}:)")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise OpsftError(f"{path}: set names must be unique (got {names})")
    drift = suite.get("drift") or {}
    if not isinstance(drift, dict) or set(drift) - set(DRIFT_OPTIONS):
        raise OpsftError(f"{path}: drift: expected a mapping of {', '.join(DRIFT_OPTIONS)}")
    drift = {key: typed(value, DRIFT_TYPES[key], f"{path}: drift.{key}") for key, value in drift.items()}
    if drift.get("limit") is not None and drift["limit"] < 1:
        raise OpsftError(f"{path}: drift.limit must be >= 1 (got {drift['limit']})")
    if "data" in drift:
        drift = {**drift, "data": _beside(suite_path, drift["data"], f"{path}: drift")}
    return sets, drift


def _beside(suite: Path, data: str, where: str) -> str:
    """A data file named in the suite, found as given or else beside the suite file; other sources unchanged."""
    if not _looks_like_file(data):
        return data
    file = Path(data)
    file = file if file.is_absolute() or file.exists() else suite.parent / file
    if not file.exists():
        raise OpsftError(f"{where}: data file {data} does not exist")
    return str(file)


def _looks_like_file(data: str) -> bool:
    return Path(data).suffix.lower() in (".jsonl", ".json", ".parquet", ".csv")


def _set_name(data: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data.split("?")[0].removeprefix("gym:")).stem) or "set"


def run_eval(config: EvalConfig) -> dict:
    sets, drift_section = eval_sets(config)
    drift_set = {"data": config.drift_data, "base": config.drift_base, "limit": config.drift_limit,
                 **{name: getattr(config, name) for name in ("prompt_field", "completion_field", "messages_field")},
                 **drift_section}
    if drift_set["data"] and not drift_set["base"]:
        drift_set["base"] = adapter_base(config.adapter or config.model)
        if drift_set["base"] is None:
            raise OpsftError("the drift measure needs the base model: pass --drift-base (for a LoRA adapter it is "
                             "read from the adapter)")
    loaded = {s.name: _load_set(s, config) for s in sets}  # all data checked before any model is loaded
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if not config.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    drift_prompts, drift_records, drift_input = {}, [], {}
    if drift_set["data"]:
        drift_prompts, drift_records, drift_input = _base_samples(config, drift_set, out)

    model, tokenizer = load_model(config.model, adapter=config.adapter, device=config.device)
    has_messages = any(isinstance(e.prompt, list) for data in loaded.values() for e in data.examples)
    rendering = use_prompt_format(tokenizer, config.prompt_format, config.model, has_messages)
    results = {s.name: _evaluate_set(s, loaded[s.name], model, tokenizer, config, out, rendering) for s in sets}
    if None in results.values():  # not the main process of `accelerate launch`: the main one scores and reports
        return {}
    drift = None
    if drift_set["data"]:
        drift = {"data": drift_set["data"], "base": drift_set["base"], **drift_input,
                 **drift_of(model, drift_records, drift_prompts, batch_size=config.batch_size)}
        (out / "drift" / "drift.json").write_text(json.dumps(drift, indent=2) + "\n")
    summary = {
        "model": config.model, "adapter": config.adapter, "prompt_format": rendering,
        "sets": results,
        "in_domain_accuracy": _macro(results, "in_domain"), "out_of_domain_accuracy": _macro(results, "out_of_domain"),
        "drift": drift,
        "config": asdict(config),
    }
    (out / "eval_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = format_eval_table(summary)
    (out / "eval_summary.md").write_text(table + "\n")
    print(f"\nopsft eval ({out}): {config.model}{' + ' + config.adapter if config.adapter else ''}\n{table}", flush=True)
    return summary


def _load_set(s: EvalSet, config: EvalConfig) -> LoadedData:
    return load_examples(s.data, prompt_field=s.prompt_field, completion_field=s.completion_field,
                         messages_field=s.messages_field, answer_field=s.answer_field, limit=s.limit,
                         skip_invalid=config.skip_invalid)


def _prompts(examples, tokenizer, budget: int, config: EvalConfig, source: str, skipped: list):
    return fitting_prompts(examples, lambda e: prompt_ids(e.prompt, tokenizer), budget, config.max_length,
                           source=source, skip_invalid=config.skip_invalid, skipped=skipped)


def _evaluate_set(s: EvalSet, data: LoadedData, model, tokenizer, config: EvalConfig, out: Path,
                  rendering: str) -> dict:
    directory = out / "sets" / s.name

    def open_log(prompts):
        settings = {"model": config.model, "adapter": config.adapter, "prompt_format": rendering, "seed": config.seed,
                    "repeat_window": config.repeat_window, "repeat_count": config.repeat_count,
                    "set": asdict(s), "prompts": {str(i): p for i, p in prompts.items()}}
        return ShardedLog(directory, settings, overwrite=config.overwrite)

    records, summary, skipped = evaluate_examples(
        model, tokenizer, data, s.sampling(config), k=s.k, seed=config.seed, batch_size=config.batch_size,
        max_length=config.max_length, skip_invalid=config.skip_invalid, open_log=open_log,
        progress=config.progress, desc=f"eval {s.name}")
    if records is None:  # not the main process of `accelerate launch`: the main one writes the outputs
        return None
    by_index = {e.index: e for e in data.examples}
    with (directory / "samples.jsonl").open("w") as f:
        for r in records:
            prompt = by_index[r["index"]].prompt
            f.write(json.dumps({"row": r["index"] + 1, "prompt": prompt, **r}, ensure_ascii=False) + "\n")
    write_skipped(directory / "skipped.jsonl", skipped)
    return {"group": s.group, "data": s.data, "temperature": s.temperature, "top_p": s.top_p,
            "max_new_tokens": s.max_new_tokens, **summary}


def _base_samples(config: EvalConfig, drift: dict, out: Path):
    """The base model's own samples on the drift prompts (logged, resumable), and what was read of the prompts:
    {rows_read, prompts, skipped: {reason: count}}; the base is freed after. `drift`: the drift set
    (DRIFT_OPTIONS), the suite's section over the command's options."""
    data, base = drift["data"], drift["base"]
    loaded = load_examples(data, prompt_field=drift["prompt_field"], completion_field=drift["completion_field"],
                           messages_field=drift["messages_field"], limit=drift["limit"],
                           skip_invalid=config.skip_invalid)
    model, tokenizer = load_model(base, device=config.device)
    rendering = use_prompt_format(tokenizer, config.prompt_format, base,
                                  any(isinstance(e.prompt, list) for e in loaded.examples))
    skipped = list(loaded.skipped)
    prompts = _prompts(loaded.examples, tokenizer, config.drift_max_new_tokens, config, data, skipped)
    if not prompts:
        raise nothing_left(data, "drift prompt left", skipped)
    settings = {"base": base, "data": data, "limit": drift["limit"], "samples": config.drift_samples,
                "max_new_tokens": config.drift_max_new_tokens, "seed": config.seed, "prompt_format": rendering,
                "prompts": {str(i): p for i, p in prompts.items()}}
    log = ShardedLog(out / "drift", settings, overwrite=config.overwrite, name="base_samples")
    sample_base(model, tokenizer, prompts, samples=config.drift_samples, max_new_tokens=config.drift_max_new_tokens,
                seed=config.seed, batch_size=config.batch_size, log=log)
    del model
    gc.collect()
    records = log.merged()  # None outside the main process, which alone scores the samples afterwards
    if records is not None:
        write_skipped(out / "drift" / "skipped.jsonl", skipped)
    read = {"rows_read": len(loaded.examples) + len(loaded.skipped), "prompts": len(prompts),
            "skipped": dict(Counter(e.reason for e in skipped))}
    return prompts, records, read


def _macro(results: dict, group: str) -> float | None:
    values = [r["accuracy"] for r in results.values() if r["group"] == group]
    return sum(values) / len(values) if values else None


def format_eval_table(summary: dict) -> str:
    lines = ["| set | group | problems | k | accuracy (95% CI) | pass@k |", "|---|---|---|---|---|---|"]
    for name, r in summary["sets"].items():
        k = r["samples_per_problem"]
        low, high = r["accuracy_ci95"]
        lines.append(f"| {name} | {r['group'].replace('_', '-')} | {r['problems']} | {k} | "
                     f"{r['accuracy']:.3f} ({low:.3f}–{high:.3f}) | {r[f'pass@{k}']:.3f} |")
    drift = summary.get("drift")
    if drift:
        lines.append(f"\ndrift from {drift['base']}: phi_mean of its samples under this model = "
                     f"{drift['drift']:+.4f} ± {drift['drift_sem']:.4f} (sem, {drift['samples']} samples)")
    return "\n".join(lines)

