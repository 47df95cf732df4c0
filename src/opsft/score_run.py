"""`opsft score`: the DDT scorer as a resumable job over a dataset, with its report.

Writes into `out`: scored.jsonl (or .parquet; the input rows plus phi_mean, phi_std, phi_pos_ratio,
phi_sum, n_tokens, truncated, and with save_tokens the completion token ids and their phi),
skipped.jsonl (every row left out, with its reason), summary.json, summary.md, phi_hist.png,
worst_examples.html, and progress.jsonl (the resumable log: a rerun continues where it stopped).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DataError, OpsftError
from .jobs import prepare
from .rendering import fingerprint, prompt_format
from .report import format_markdown, format_table, phi_summary, plot_histogram, worst_examples_html
from .resumable import ResultLog
from .scoring import iter_scored, score_token_ids


@dataclass
class ScoreConfig:
    model: str = field(metadata={"help": "model: built-in alias (smollm2-135m), local directory or hub id"})
    data: str = field(metadata={"help": "dataset: .jsonl/.json/.parquet/.csv file, gym:<task>?size=N&seed=S, "
                                        "or a hub name (name?config=C&split=S)"})
    out: str = field(default="runs/score", metadata={"help": "output directory (a rerun resumes in it)"})
    prompt_field: str | None = field(default=None, metadata={"help": "column holding the prompt (e.g. question)"})
    completion_field: str | None = field(default=None,
                                         metadata={"help": "column holding the completion (e.g. solution)"})
    messages_field: str | None = field(default=None, metadata={"help": "column holding a message list"})
    answer_field: str | None = field(default=None, metadata={"help": "column holding the reference answer"})
    limit: int | None = field(default=None, metadata={"help": "score only the first N rows"})
    temperature: float = field(default=1.0, metadata={"help": "tau: phi is computed under softmax(z / tau)"})
    max_length: int = field(default=1024, metadata={"help": "token limit of prompt + completion, as in training; "
                                                             "longer completions are truncated"})
    batch_size: int = field(default=8, metadata={"help": "examples per forward pass"})
    skip_invalid: bool = field(default=False, metadata={"help": "skip bad rows (counted by reason) instead of "
                                                                 "stopping at the first"})
    save_tokens: bool = field(default=False, metadata={"help": "also save per-token ids and phi"})
    format: str = field(default="jsonl", metadata={"help": "format of the scored dataset",
                                                   "choices": ["jsonl", "parquet"]})
    in_threshold: float = field(default=-0.05, metadata={"help": "phi_mean at or above this is in-distribution"})
    out_threshold: float = field(default=-0.1, metadata={"help": "phi_mean below this is out-of-distribution"})
    worst: int = field(default=20, metadata={"help": "examples shown in worst_examples.html"})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu (default: cuda when available)"})
    overwrite: bool = field(default=False, metadata={"help": "discard an earlier run in --out instead of resuming"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def settings(self) -> dict:
        """What the results depend on: a rerun resumes only when these are unchanged."""
        keep = ("model", "data", "prompt_field", "completion_field", "messages_field", "answer_field", "limit",
                "temperature", "max_length", "skip_invalid", "save_tokens")
        return {k: v for k, v in asdict(self).items() if k in keep}


def run_score(config: ScoreConfig) -> dict:
    """Score config.data under config.model; returns the summary (also written to out/summary.json)."""
    out = Path(config.out)
    prepared = prepare(config)
    data, model, tokenizer = prepared.data, prepared.model, prepared.tokenizer
    tokenized, skipped = prepared.tokenized, prepared.skipped
    if not tokenized:
        raise OpsftError(f"{config.data}: no example left to score ({len(skipped)} skipped: "
                         f"{dict(Counter(e.reason for e in skipped))})")
    # the inputs' fingerprint: an edited data file or another tokenizer/template is a different run
    settings = {**config.settings(), "inputs_sha256": fingerprint(tokenized)}
    log = ResultLog(out / "progress.jsonl", settings, overwrite=config.overwrite)
    done = log.done()
    todo = [t for t in tokenized if t.index not in done]
    if done:
        print(f"opsft: resuming in {out}: {len(done)} examples already scored, {len(todo)} to go", flush=True)
    started, new_tokens = time.perf_counter(), 0
    for batch in iter_scored(model, todo, temperature=config.temperature, batch_size=config.batch_size,
                             save_tokens=config.save_tokens, progress=config.progress):
        log.append([{"index": s.index, **s.summary()} for s in batch])
        new_tokens += sum(s.n_tokens for s in batch)
    seconds = time.perf_counter() - started

    scored = log.records()
    summary = phi_summary(scored, in_threshold=config.in_threshold, out_threshold=config.out_threshold)
    summary["run"] = {**config.settings(), "prompt_format": prompt_format(tokenizer), "source_shape": data.shape,
                      "rows_read": len(data.examples) + len(data.skipped)}
    summary["skipped"] = dict(Counter(e.reason for e in skipped))
    summary["throughput"] = {"tokens_scored_this_run": new_tokens, "seconds": round(seconds, 2),
                             "tokens_per_second": round(new_tokens / seconds, 1) if new_tokens else None}
    _write_outputs(out, config, data.examples, scored, skipped, summary)
    by_index = {t.index: t for t in tokenized}
    worst = sorted(scored, key=lambda s: s["phi_mean"])[: config.worst]
    _write_worst_html(out, model, tokenizer, config, [by_index[s["index"]] for s in worst],
                      {e.index: e for e in data.examples}, summary)
    print(f"\nDDT score  ({out})\n{format_table(summary)}\n", flush=True)
    return summary


def _write_outputs(out, config, examples, scored, skipped: list[DataError], summary) -> None:
    rows_by_index = {e.index: e.row for e in examples}
    rows = [{**rows_by_index[s["index"]], **{k: v for k, v in s.items() if k != "index"}} for s in scored]
    if config.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out / "scored.parquet")
    else:
        with (out / "scored.jsonl").open("w") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with (out / "skipped.jsonl").open("w") as f:
        f.writelines(json.dumps({"row": e.row, "field": e.field, "reason": e.reason, "error": str(e)}) + "\n"
                     for e in skipped)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(format_markdown(summary))
    plot_histogram(scored, summary, out / "phi_hist.png")


def _write_worst_html(out, model, tokenizer, config, worst, examples_by_index, summary) -> None:
    """Re-score the few worst examples token by token (cheap) rather than keeping every token's phi."""
    phis = score_token_ids(model, [(t.input_ids, t.completion_start) for t in worst],
                           temperature=config.temperature, batch_size=config.batch_size)
    items = []
    for t, phi in zip(worst, phis):
        prompt = examples_by_index[t.index].prompt
        items.append({
            "index": t.index,
            "phi_mean": float(phi.mean()),
            "prompt_text": prompt if isinstance(prompt, str) else prompt[-1]["content"],
            "tokens": [tokenizer.decode([i]) for i in t.input_ids[t.completion_start:]],
            "token_phi": phi.tolist(),
        })
    worst_examples_html(items, summary, out / "worst_examples.html")
