"""`opsft score`: the DDT scorer as a resumable job over a dataset, with its report.

Writes into `out`: scored.jsonl (or .parquet; the input rows plus phi_mean, phi_std, phi_pos_ratio,
phi_sum, n_tokens, truncated, and with save_tokens the completion token ids and their phi),
skipped.jsonl (every row left out, with its reason), summary.json, summary.md, phi_hist.png,
worst_examples.html, and progress.jsonl (the resumable log: a rerun continues where it stopped; under
`accelerate launch`, one progress-R-of-W.jsonl per process, merged by the main process).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine.scoring import iter_scored, score_token_ids
from ..inputs.prepare import prepare
from ..inputs.rendering import fingerprint, prompt_format
from ..methods.advice import advice, format_advice
from ..methods.ddt import phi_summary
from ..runtime.errors import DataError, OpsftError, nothing_left, write_skipped
from ..runtime.options import REQUIRED, Options, option
from ..runtime.resumable import ShardedLog
from .report import format_markdown, format_table, plot_histogram, worst_examples_html


@dataclass
class ScoreConfig(Options):
    model: str = option(REQUIRED, "model: built-in alias (smollm2-135m), local directory or hub id")
    data: str = option(REQUIRED, "dataset: .jsonl/.json/.parquet/.csv file, gym:<task>?size=N&seed=S, "
                                 "or a hub name (name?config=C&split=S)")
    out: str = option("runs/score", "output directory (a rerun resumes in it)", output_dir=True)
    prompt_field: str | None = option(None, "column holding the prompt (e.g. question)")
    completion_field: str | None = option(None, "column holding the completion (e.g. solution)")
    messages_field: str | None = option(None, "column holding a message list")
    answer_field: str | None = option(None, "column holding the reference answer")
    limit: int | None = option(None, "score only the first N rows", at_least=1)
    temperature: float = option(1.0, "tau: phi is computed under softmax(z / tau)", above=0)
    max_length: int = option(1024, "token limit of prompt + completion, as in training; longer completions are "
                                   "truncated", at_least=2)
    batch_size: int = option(8, "examples per forward pass", at_least=1)
    skip_invalid: bool = option(False, "skip bad rows (counted by reason) instead of stopping at the first")
    save_tokens: bool = option(False, "also save per-token ids and phi")
    format: str = option("jsonl", "format of the scored dataset", choices=["jsonl", "parquet"])
    in_threshold: float = option(-0.05, "phi_mean at or above this is in-distribution")
    out_threshold: float = option(-0.1, "phi_mean below this is out-of-distribution")
    worst: int = option(20, "examples shown in worst_examples.html", at_least=0)
    device: str | None = option(None, "cuda / cpu (default: cuda when available)", device=True)
    overwrite: bool = option(False, "discard an earlier run in --out instead of resuming")
    progress: bool = option(True, "show progress bars")

    def rules(self):
        return [(self.in_threshold >= self.out_threshold,
                 f"--in-threshold ({self.in_threshold}) must be >= --out-threshold ({self.out_threshold}): "
                 f"phi_mean at or above the first is in-distribution, below the second out of it")]

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
    if config.format == "parquet":
        check_parquet_rows([e.row for e in data.examples], config.data)
    if not tokenized:
        raise nothing_left(config.data, "example left to score", skipped)
    # the inputs' fingerprint: an edited data file or another tokenizer/template is a different run
    settings = {**config.settings(), "inputs_sha256": fingerprint(tokenized)}
    # under `accelerate launch` each process scores its share of the examples (resumable.ShardedLog)
    log = ShardedLog(out, settings, overwrite=config.overwrite)
    todo, done = log.mine(tokenized), log.done()
    if done and log.is_main_process:
        print(f"opsft: resuming in {out}: {len(done)} examples already scored, {len(tokenized) - len(done)} to go",
              flush=True)
    started, new_tokens = time.perf_counter(), 0
    for batch in iter_scored(model, todo, temperature=config.temperature, batch_size=config.batch_size,
                             save_tokens=config.save_tokens, progress=config.progress):
        log.append([{"index": s.index, **s.summary()} for s in batch])
        new_tokens += sum(s.n_tokens for s in batch)
    seconds = time.perf_counter() - started
    scored = log.merged()
    if scored is None:  # not the main process: the main one writes the outputs
        return {}

    summary = phi_summary(scored, in_threshold=config.in_threshold, out_threshold=config.out_threshold)
    summary["advice"] = advice(summary["phi_mean"]["mean"])
    summary["run"] = {**config.settings(), "prompt_format": prompt_format(tokenizer), "source_shape": data.shape}
    summary["rows_read"] = len(data.examples) + len(data.skipped)
    summary["skipped"] = dict(Counter(e.reason for e in skipped))
    summary["throughput"] = {"processes": log.world, "tokens_scored_this_run_by_main_process": new_tokens,
                             "seconds": round(seconds, 2),
                             "tokens_per_second": round(new_tokens / seconds, 1) if new_tokens else None}
    _write_outputs(out, config, data.examples, scored, skipped, summary)
    by_index = {t.index: t for t in tokenized}
    worst = sorted(scored, key=lambda s: s["phi_mean"])[: config.worst]
    _write_worst_html(out, model, tokenizer, config, [by_index[s["index"]] for s in worst],
                      {e.index: e for e in data.examples}, summary)
    print(f"\nDDT score  ({out})\n{format_table(summary)}\n\n{format_advice(summary['advice'])}\n", flush=True)
    return summary


def check_parquet_rows(rows: list[dict], source: str) -> None:
    """The input rows must make a Parquet table (one type per column): checked before any scoring, so that
    the final write cannot fail after the work is done."""
    import pyarrow as pa

    try:
        pa.Table.from_pylist(rows)
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise OpsftError(f"{source}: these rows cannot be written as Parquet ({str(e).splitlines()[0]}): a column "
                         f"holds values of different types; use --format jsonl") from None


def _write_outputs(out, config, examples, scored, skipped: list[DataError], summary) -> None:
    rows_by_index = {e.index: e.row for e in examples}
    rows = [{**rows_by_index[s["index"]], **{k: v for k, v in s.items() if k != "index"}} for s in scored]
    if config.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(pa.Table.from_pylist(rows), out / "scored.parquet")
        except (pa.ArrowException, TypeError, ValueError, OSError) as e:
            raise OpsftError(f"{out / 'scored.parquet'}: could not be written ({str(e).splitlines()[0]}); every "
                             f"score is kept in {out / 'progress.jsonl'}: rerun with --format jsonl to write them "
                             f"without scoring again") from None
    else:
        with (out / "scored.jsonl").open("w") as f:
            f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    write_skipped(out / "skipped.jsonl", skipped)
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
