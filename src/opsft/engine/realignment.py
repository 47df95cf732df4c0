"""Realignment: rewrite each reference solution with Hinted Decoding, check it, keep what passes
(`opsft.realign`, and `opsft realign` over it).

For every (question, reference solution): decode a rewrite (engine/hinted_decoding.py), check its final answer against
the reference (the task's scorer for reasoning-gym tasks, math-verify otherwise), and score both the
original and the rewrite under the plain prompt (phi_mean, DDT). Filters decide what is kept; every
dropped row is counted by reason and listed with its rewrite. The rows kept are the input rows with
prompt/completion in the input's shape, ready for training, plus a `realign` provenance column.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from ..inputs.data import Example, completion_like, load_examples
from ..inputs.models import model_argument
from ..inputs.prepare import Prepared
from ..inputs.rendering import fitting_prompts, prompt_ids, tokenize_dataset, tokenize_example
from ..methods.answers import answer_matches
from ..methods.hinted import LAMBDA_MODES, HintedDecodingConfig
from ..runtime.errors import nothing_left
from ..runtime.options import REQUIRED, Options, option, template_rule
from ..runtime.resumable import MemoryLog
from .evaluation import completion_text, reference_answer
from .generation import decoded_text, eos_token_ids
from .hinted_decoding import hinted_decode
from .scoring import score_token_ids

ANALYSIS_TEMPLATE = (
    "{question}\n\n"
    "Here is a correct solution:\n{solution}\n\n"
    "Before solving the problem yourself, analyse this solution briefly: what are its key steps and why do "
    "they work?"
)
HINT_TEMPLATE = (
    "{question}\n\n"
    "A correct reference solution follows. Work the problem out yourself, step by step, in your own words "
    "and style, and reach the same final answer. Do not mention or refer to the reference solution.\n\n"
    "Reference solution:\n{solution}"
)


@dataclass
class RealignConfig(Options):
    model: str = option(REQUIRED, "model: built-in alias (smollm2-135m), local directory or hub id")
    data: str = option(REQUIRED, "dataset with questions and reference solutions (as for opsft score)")
    out: str = option("runs/realign", "output directory (a rerun resumes in it)", output_dir=True)
    prompt_field: str | None = option(None, "column holding the question")
    completion_field: str | None = option(None, "column holding the reference solution")
    messages_field: str | None = option(None, "column holding a message list")
    answer_field: str | None = option(None, "column holding the reference final answer (default: extracted "
                                              "from the reference solution)")
    limit: int | None = option(None, "realign only the first N rows", at_least=1)
    skip_invalid: bool = option(False, "skip bad rows (counted by reason) instead of stopping at the first")
    max_length: int = option(2048, "token limit of a prompt (hinted or plain) plus the rewrite", at_least=2)
    hint_template: str = option(HINT_TEMPLATE, "hinted prompt; {question} and {solution} are filled in")
    analysis: bool = option(False, "first let the model write a short greedy analysis of the reference, and "
                                    "append it to the hinted prompt before the rewrite starts")
    analysis_template: str = option(ANALYSIS_TEMPLATE, "prompt for the analysis; {question} and {solution}")
    analysis_max_tokens: int = option(128, "length cap of the analysis", at_least=1)
    lambda_mode: str = option("linear", "lam = f(H / log V): linear, sigmoid or piecewise",
                               choices=list(LAMBDA_MODES))
    beta: float = option(3.0, "linear slope / sigmoid steepness of f (0: follow the hinted stream only)",
                         at_least=0)
    center: float = option(0.5, "sigmoid centre of f (in units of log V)", at_least=0, at_most=1)
    h1: float = option(0.3, "piecewise: lam = 0 below (in units of log V; as the authors)", at_least=0, at_most=1)
    h2: float = option(0.7, "piecewise: lam = 1 above (in units of log V; as the authors)", at_least=0, at_most=1)
    temperature: float = option(1.0, "sampling temperature after top-p (0: greedy; the authors used 0.3, "
                                     "which makes rewrites score positive at tau = 1)", at_least=0)
    top_p: float = option(1.0, "nucleus kept before sampling (the authors: 0.95)", above=0, at_most=1)
    max_new_tokens: int = option(512, "length cap of a rewrite", at_least=1)
    answer_marker: str = option("auto", "text after which the plain stream writes alone: auto (\\boxed{ or "
                                         "#### as the references use), none, or the marker itself")
    repeat_window: int = option(30, "stop when a window of this many tokens (0: never) ...", at_least=0)
    repeat_count: int = option(5, "... has occurred this many times", at_least=2)
    seed: int = option(0, "sampling seed", at_least=0)
    batch_size: int = option(16, "examples decoded together (each has two streams)", at_least=1)
    require_correct: bool = option(True, "keep only rewrites whose final answer matches the reference")
    require_eos: bool = option(True, "keep only rewrites that ended on their own (not cut by length/repetition)")
    require_marker: bool = option(False, "keep only rewrites that wrote the answer marker (the answer is "
                                          "checked either way: without the marker, its last number)")
    min_phi_mean: float | None = option(None, "keep only rewrites with phi_mean at least this")
    device: str | None = option(None, "cuda / cpu (default: cuda when available)", device=True)
    overwrite: bool = option(False, "discard an earlier run in --out instead of resuming")
    progress: bool = option(True, "show progress bars")

    def rules(self):
        return [template_rule(self.hint_template, {"question", "solution"}, "--hint-template"),
                template_rule(self.analysis_template, {"question", "solution"}, "--analysis-template"),
                (self.h1 <= self.h2,
                 f"--h1 ({self.h1}) must be <= --h2 ({self.h2}): lam rises from 0 at h1 to 1 at h2")]

    def decoding(self, marker: str | None) -> HintedDecodingConfig:
        names = {f.name for f in fields(HintedDecodingConfig)} - {"answer_marker", "hinted_first_token"}
        return HintedDecodingConfig(answer_marker=marker, **{n: getattr(self, n) for n in names})

    def settings(self) -> dict:
        keep = {"model", "data", "prompt_field", "completion_field", "messages_field", "answer_field", "limit",
                "skip_invalid", "max_length", "hint_template", "answer_marker", "analysis", "analysis_template",
                "analysis_max_tokens"} | {
            f.name for f in fields(HintedDecodingConfig)}
        return {k: v for k, v in asdict(self).items() if k in keep}


def hinted_prompt(example: Example, template: str):  # also renders the analysis prompt
    """The question with the reference solution and the rewrite instruction, in the example's shape."""
    solution = completion_text(example)
    if isinstance(example.prompt, str):
        return template.format(question=example.prompt, solution=solution) + "\n"
    *context, last = example.prompt
    return context + [{"role": last["role"], "content": template.format(question=last["content"],
                                                                        solution=solution)}]


def pick_marker(config: RealignConfig, examples: list[Example]) -> str | None:
    if config.answer_marker == "none":
        return None
    if config.answer_marker != "auto":
        return config.answer_marker
    solutions = [completion_text(e) for e in examples]
    for marker in ("\\boxed{", "####"):
        if solutions and sum(marker in s for s in solutions) >= len(solutions) / 2:
            return marker
    return None


@dataclass
class Realigned:
    kept: list[dict]  # the input rows with the rewrite as completion and a `realign` provenance column
    dropped: list[dict]  # {row, reason, rewrite, provenance...} for every rewrite not kept
    records: list[dict]  # one per example decoded, in index order (what the resumable log holds)
    summary: dict
    skipped: list  # rows left out before decoding, each with its reason


def realign(model, dataset, *, processing_class=None, **options) -> tuple:
    """Hinted Decoding rewrites of the dataset's reference solutions, as `opsft realign` makes them; returns
    (realigned, dropped, summary): datasets.Datasets of the rows kept (ready for training) and of the rewrites
    dropped, each with its reason, and the command's summary.

    `model`: a name, path or alias, or a loaded model with its `processing_class`. `dataset`: a datasets.Dataset,
    a list of rows or a file, in any shape `opsft score` reads. `options`: opsft realign's options by their Python
    names and defaults (lambda_mode="linear", beta=3.0, temperature=1.0, max_new_tokens=512, require_correct=True,
    prompt_field, ...)."""
    from datasets import Dataset

    model, tokenizer, name = model_argument(model, processing_class, device=options.get("device"),
                                            what="opsft.realign")
    config = RealignConfig(model=name, data=dataset if isinstance(dataset, str) else "the dataset", **options)
    data = load_examples(dataset, prompt_field=config.prompt_field, completion_field=config.completion_field,
                         messages_field=config.messages_field, answer_field=config.answer_field, limit=config.limit,
                         skip_invalid=config.skip_invalid)
    tokenized, skipped = tokenize_dataset(data.examples, tokenizer, max_length=config.max_length,
                                          skip_invalid=config.skip_invalid, source=data.source)
    result = realign_examples(Prepared(data, model, tokenizer, tokenized, data.skipped + skipped), config)
    return Dataset.from_list(result.kept), Dataset.from_list(result.dropped), result.summary


def realign_examples(prepared: Prepared, config: RealignConfig, open_log: Callable | None = None) -> Realigned | None:
    """Decode, check and filter a rewrite of every prepared example. `open_log()` gives the log the rewrites go to
    (the command's resumable ShardedLog; default: kept in memory), opened once the inputs are checked. None in the
    processes of `accelerate launch` other than the main one, which has every record."""
    data, model, tokenizer = prepared.data, prepared.model, prepared.tokenizer
    tokenized, skipped = prepared.tokenized, prepared.skipped
    by_index = {e.index: e for e in data.examples}
    examples = [by_index[t.index] for t in tokenized]
    budget = config.max_new_tokens + (config.analysis_max_tokens if config.analysis else 0)
    hinted = fitting_prompts(examples, lambda e: prompt_ids(hinted_prompt(e, config.hint_template), tokenizer), budget,
                             config.max_length, source=data.source, skip_invalid=config.skip_invalid,
                             skipped=skipped, what="hinted prompt")
    prompts = {i: (ids, prompt_ids(by_index[i].prompt, tokenizer)) for i, ids in hinted.items()}
    examples = [e for e in examples if e.index in prompts]
    if not examples:
        raise nothing_left(data.source, "example left to realign", skipped)
    marker = pick_marker(config, examples)
    decoding = config.decoding(marker)
    eos = eos_token_ids(model, tokenizer)

    log = open_log() if open_log is not None else MemoryLog()
    todo = log.mine(examples)
    started, new_tokens = time.perf_counter(), 0
    with tqdm(total=len(todo), unit="ex", desc="realigning", disable=not config.progress) as bar:
        for first in range(0, len(todo), config.batch_size):
            batch = todo[first:first + config.batch_size]
            analyses = write_analyses(model, tokenizer, batch, config) if config.analysis else [[] for _ in batch]
            decoded = hinted_decode(model, [prompts[e.index][0] + a for e, a in zip(batch, analyses)],
                                    [prompts[e.index][1] for e in batch],
                                    decoding, eos_token_ids=eos, tokenizer=tokenizer,
                                    pad_token_id=tokenizer.pad_token_id or 0,
                                    seeds=[config.seed * 1_000_003 + e.index for e in batch])
            records = _check_batch(batch, decoded, tokenizer, model, config)
            if config.analysis:
                for record, analysis in zip(records, analyses):
                    record["analysis"] = tokenizer.decode(analysis, skip_special_tokens=True)
            log.append(records)
            new_tokens += sum(len(d.tokens) for d in decoded)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    merged = log.merged()
    if merged is None:  # not the main process
        return None
    return _filtered(config, data, examples, merged, skipped, marker,
                     {"processes": log.world, "tokens_generated_this_run_by_main_process": new_tokens,
                      "seconds": round(seconds, 2),
                      "tokens_per_second": round(new_tokens / seconds, 1) if new_tokens else None})


@torch.no_grad()
def write_analyses(model, tokenizer, batch: list[Example], config: RealignConfig) -> list[list[int]]:
    """Greedy analyses of the reference solutions, as tokens to append to the hinted prompts (they start
    the hinted stream's reply; a blank line then separates them from the rewrite)."""
    prompts = [prompt_ids(hinted_prompt(e, config.analysis_template), tokenizer) for e in batch]
    pad = tokenizer.pad_token_id or 0
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p):], attention_mask[row, width - len(p):] = torch.tensor(p), 1
    device = model.get_output_embeddings().weight.device
    generated = model.generate(input_ids.to(device), attention_mask=attention_mask.to(device), do_sample=False,
                               max_new_tokens=config.analysis_max_tokens, pad_token_id=pad)[:, width:].tolist()
    separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stop = eos_token_ids(model, tokenizer) | {pad}
    analyses = []
    for tokens in generated:
        cut = next((i for i, t in enumerate(tokens) if t in stop), len(tokens))
        analyses.append(tokens[:cut] + separator)
    return analyses


def _check_batch(batch: list[Example], decoded, tokenizer, model, config: RealignConfig) -> list[dict]:
    """Provenance of each rewrite: how it ended, whether its answer is right, and phi_mean under the plain
    prompt of the original and of the rewrite (scored for the whole batch at once)."""
    eos = eos_token_ids(model, tokenizer)
    rewrites = [decoded_text(tokenizer, d, eos) for d in decoded]

    def scored(example, completion):
        ids, start = tokenize_example(example.prompt, completion, tokenizer)
        return ids[:config.max_length], start

    def phi_means(sequences, temperature=1.0):
        return [float(np.mean(phi)) for phi in
                score_token_ids(model, sequences, temperature=temperature, batch_size=len(batch))]

    written = [i for i, rewrite in enumerate(rewrites) if rewrite]
    rewritten = [scored(batch[i], completion_like(batch[i], rewrites[i])) for i in written]
    original = phi_means([scored(e, e.completion) for e in batch])
    rewrite_phi = dict(zip(written, phi_means(rewritten))) if written else {}
    # SPEC §1: a sample drawn at temperature tau' < 1 scores positive at tau = 1; at its own temperature
    # it scores ~0 if it is the model's own. Both are kept: tau = 1 is what training sees.
    at_sampling = {}
    if written and config.temperature not in (0, 1):
        at_sampling = dict(zip(written, phi_means(rewritten, config.temperature)))
    records = []
    for i, (example, d, rewrite) in enumerate(zip(batch, decoded, rewrites)):
        reference = reference_answer(example)
        records.append({
            "index": example.index, "rewrite": rewrite, "finish_reason": d.finish_reason,
            "handover_step": d.handover_step, "mean_lambda": d.mean_lambda, "n_tokens": len(d.tokens),
            "answer_correct": bool(rewrite) and answer_matches(rewrite, reference, example.verify),
            "phi_mean_original": original[i],
            "phi_mean_rewrite": rewrite_phi.get(i),
            "phi_mean_rewrite_at_sampling_temperature": at_sampling.get(i),
        })
    return records


def _drop_reason(record: dict, config: RealignConfig, marker: str | None) -> str | None:
    if not record["rewrite"]:
        return "empty_rewrite"
    if config.require_eos and record["finish_reason"] != "eos":
        return f"finished_by_{record['finish_reason']}"
    if config.require_marker and marker is not None and marker not in record["rewrite"]:
        return "no_answer_marker"
    if config.require_correct and not record["answer_correct"]:
        return "wrong_answer"
    if config.min_phi_mean is not None and record["phi_mean_rewrite"] < config.min_phi_mean:
        return "phi_mean_below_minimum"
    return None


def _filtered(config, data, examples, records, skipped, marker, throughput) -> Realigned:
    by_index = {e.index: e for e in examples}
    kept, dropped = [], []
    for r in records:
        example, reason = by_index[r["index"]], _drop_reason(r, config, marker)
        provenance = {k: v for k, v in r.items() if k not in ("index", "rewrite")}  # with the analysis, if any
        provenance.update(source_row=r["index"] + 1, temperature=config.temperature, lambda_mode=config.lambda_mode,
                          beta=config.beta, answer_marker=marker, model=config.model)
        if reason:
            dropped.append({"row": r["index"] + 1, "reason": reason, "rewrite": r["rewrite"], **provenance})
            continue
        kept.append({**example.row, "prompt": example.prompt, "completion": completion_like(example, r["rewrite"]),
                     "realign": provenance})
    before = [r["phi_mean_original"] for r in records]
    after = [r["phi_mean_rewrite"] for r in records if r["phi_mean_rewrite"] is not None]
    after_kept = [row["realign"]["phi_mean_rewrite"] for row in kept]
    summary = {
        "run": {**config.settings(), "answer_marker_used": marker},
        "rows_read": len(data.examples) + len(data.skipped),
        "skipped_input": dict(Counter(e.reason for e in skipped)),
        "decoded": len(records), "kept": len(kept), "kept_fraction": len(kept) / len(records) if records else 0.0,
        "dropped": dict(Counter(d["reason"] for d in dropped)),
        "answer_correct": sum(r["answer_correct"] for r in records),
        "answer_marker_written": sum(marker is not None and marker in r["rewrite"] for r in records),
        "phi_mean_original": _stats(before), "phi_mean_rewrite": _stats(after),
        "phi_mean_rewrite_kept": _stats(after_kept),
        "phi_mean_rewrite_at_sampling_temperature": _stats(
            [r["phi_mean_rewrite_at_sampling_temperature"] for r in records
             if r.get("phi_mean_rewrite_at_sampling_temperature") is not None]),
        "throughput": throughput,
    }
    return Realigned(kept, dropped, records, summary, skipped)


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": float("nan"), "median": float("nan")}
    v = np.asarray(values)
    return {"n": len(v), "mean": float(v.mean()), "median": float(np.median(v)),
            "sem": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")}
