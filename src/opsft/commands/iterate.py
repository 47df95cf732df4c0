"""`opsft iterate`: iterative on-policy SFT, rounds of generate -> check -> train (SPEC §8).

Round r = 1..R starts from the model after round r-1 (round 1: --model). For every training problem it builds the
round's data from that model alone:

    --source realign     a Hinted Decoding rewrite with the reference as the hint, kept if correct and finished
    --source rejection   the model's own samples (--k per problem), up to --per-problem distinct correct, finished
    --source realign+rejection   both, every accepted row of either
    --fallback reference | skip  a problem with nothing accepted: train on its reference solution, or leave it out

then trains on them with any loss of the family (--loss and its options; LoRA or full) for the round's share of
--token-budget (equal shares), and the next round starts from the model it trained. Each stage is the command of
the same name run as a function (realign, rejection, score, train, eval), in its own directory of the round, so
every stage resumes as that command does and shards the same way under `accelerate launch`; rerunning the same
command continues where it stopped (a run with other settings in --output-dir is refused; --overwrite discards it).

Writes into output_dir: round-R/ (realign/, rejection/, data.jsonl and data_summary.json, score/ (the round data's
phi_mean under the model that generated them), train/, merged/ (with --lora: the round's model, merged, which the
next round starts from; removed once that round has trained, unless --keep-round-models), eval/ with
--eval-suite), rounds.jsonl (one line per round: a rerun takes up after the last), final (a link to the last
round's model), report.md and rounds.png.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..engine.realignment import RealignConfig
from ..engine.rejection_sampling import RejectionConfig
from ..engine.train_config import PREFERENCE_METHODS, TrainConfig, budget_steps
from ..inputs.data import load_examples
from ..runtime.errors import OpsftError
from ..runtime.options import option
from ..runtime.processes import main_result, on_main, state
from ..runtime.resumable import refuse_other_settings
from .eval import EvalConfig, run_eval
from .realign import run_realign
from .rejection import run_rejection
from .score import ScoreConfig, run_score
from .train import run_train

SOURCES = ("realign", "rejection", "realign+rejection")
RUN_FILE = "iterate_run.json"
# options that change where or how the run reports, not what it computes
NOT_SETTINGS = ("output_dir", "overwrite", "progress", "report_to", "logging_steps", "save_steps", "save_total_limit",
                "device", "logits_memory_mb", "generation_batch_size", "resume", "keep_round_models")


class EmptyRound(OpsftError):
    """A round with nothing to train on: --fallback skip, and no problem had an accepted output."""


@dataclass(kw_only=True)
class IterateConfig(TrainConfig):
    output_dir: str = option("runs/iterate", "output directory: every round's data, models and logs, rounds.jsonl, "
                                             "the final model, the report (a rerun resumes in it)", output_dir=True)
    answer_field: str | None = option(None, "column holding the reference final answer (default: extracted from "
                                              "the reference solution)")
    source: str = option("rejection", "where a round's data come from: realign (Hinted Decoding, the reference as "
                                      "the hint), rejection (the model's own correct samples), or both",
                         choices=list(SOURCES))
    fallback: str = option("reference", "a problem with no accepted output in a round: train on its reference "
                                        "solution, or skip it", choices=["reference", "skip"])
    rounds: int = option(3, "rounds of generate -> check -> train", at_least=1)
    token_budget: int | None = option(None, "training tokens (prompt + completion) over all rounds, in equal "
                                            "shares: a round trains share / (tokens a step sees: a global batch of "
                                            "its rows, or all of them when fewer) steps (default: --max-steps or "
                                            "--num-train-epochs a round)",
                                      at_least=1)
    k: int = option(4, "rejection: samples per problem", at_least=1)
    per_problem: int = option(1, "rejection: distinct correct answers kept per problem (<= --k)", at_least=1)
    temperature: float = option(1.0, "sampling temperature of either source", above=0)
    max_new_tokens: int = option(512, "length cap of a generated answer", at_least=1)
    generation_batch_size: int = option(16, "sequences generated together", at_least=1)
    keep_round_models: bool = option(False, "with --lora, keep every round's merged model (default: a round's is "
                                            "removed once the next round has trained; the last is kept)")
    eval_suite: str | None = option(None, "an opsft eval suite (YAML): in-domain and out-of-domain accuracy of "
                                          "each round's model")

    def rules(self):
        return super().rules() + [
            (self.loss not in PREFERENCE_METHODS, f"--loss {self.loss}: opsft iterate trains on accepted solutions "
                                                  f"with a loss of the SFT family, not on preference pairs"),
            (self.per_problem <= self.k, f"--per-problem ({self.per_problem}) must be <= --k ({self.k})"),
            (not self.resume, "--resume: opsft iterate always continues the run in --output-dir (rerun the same "
                              "command); --overwrite starts afresh"),
        ]

    def settings(self) -> dict:
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k not in NOT_SETTINGS}, default=str))


def run_iterate(config: IterateConfig) -> dict:
    out = Path(config.output_dir)
    on_main(lambda: _claim(out, config))
    problems = load_examples(config.data, prompt_field=config.prompt_field, completion_field=config.completion_field,
                             messages_field=config.messages_field, answer_field=config.answer_field,
                             limit=config.limit, skip_invalid=config.skip_invalid)
    rounds = on_main(lambda: _finished_rounds(out))  # a rerun takes up after the last round it recorded
    model = rounds[-1]["trained_model"] if rounds else config.model
    for r in range(len(rounds) + 1, config.rounds + 1):
        record, model = _round(config, out / f"round-{r}", r, model, problems)
        rounds.append(record)
        on_main(lambda: _write_rounds(out, rounds))
        if config.lora and r > 1 and not config.keep_round_models:  # the next round starts from this one's model
            on_main(lambda: shutil.rmtree(out / f"round-{r - 1}" / "merged", ignore_errors=True))
    summary = on_main(lambda: _finish(out, config, rounds, model))
    return summary if state().is_main_process else {}


def _finished_rounds(out: Path) -> list[dict]:
    path = out / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _claim(out: Path, config: IterateConfig) -> None:
    """One iterate run per directory: a rerun with the same settings continues it, other settings are refused."""
    path = out / RUN_FILE
    if config.overwrite and out.exists():
        for child in out.iterdir():
            if child.name != ".opsft.lock":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    if path.exists():
        refuse_other_settings(path, json.loads(path.read_text()).get("settings"), config.settings())
    elif out.exists() and any(c.name != ".opsft.lock" for c in out.iterdir()):
        raise OpsftError(f"{out} holds other files, not an opsft iterate run; use another --output-dir or --overwrite")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": config.settings()}, indent=2) + "\n")


def _round(config: IterateConfig, directory: Path, r: int, model: str, problems) -> tuple[dict, str]:
    """One round from `model` (round r-1's): its record, and the model it trained."""
    common = dict(model=model, data=config.data, prompt_field=config.prompt_field,
                  completion_field=config.completion_field, messages_field=config.messages_field,
                  answer_field=config.answer_field, limit=config.limit, skip_invalid=config.skip_invalid,
                  max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed + r - 1,
                  batch_size=config.generation_batch_size, max_length=config.max_length, device=config.device,
                  progress=config.progress)
    generated = {}
    if "realign" in config.source.split("+"):
        generated["realign"] = main_result(run_realign(RealignConfig(out=str(directory / "realign"), **common)))
    if "rejection" in config.source.split("+"):
        generated["rejection"] = main_result(run_rejection(RejectionConfig(
            out=str(directory / "rejection"), k=config.k, per_problem=config.per_problem, **common)))
    data = directory / "data.jsonl"
    made = on_main(lambda: _round_data(config, directory, r, problems, generated))
    phi = main_result(run_score(ScoreConfig(model=model, data=str(data), out=str(directory / "score"),
                                            max_length=config.max_length, device=config.device,
                                            progress=config.progress)))["phi_mean"]
    train = _train_config(config, directory, model, made["tokens_per_example"], made["rows"], r)
    trained = main_result(run_train(train))
    next_model = _round_model(config, directory)
    record = {"round": r, "model": model, **{k: v for k, v in made.items() if k != "tokens_per_example"},
              "phi_mean": phi["mean"], "phi_mean_sem": phi["sem"],
              "train": {"steps": trained["steps"], "train_tokens": trained["train_tokens"],
                        "train_loss": next((h["train_loss"] for h in reversed(trained["log_history"])
                                            if "train_loss" in h), None),
                        "seconds": trained["train_seconds"]},
              "trained_model": next_model}
    if config.eval_suite:
        evaluated = main_result(run_eval(EvalConfig(model=next_model, suite=config.eval_suite,
                                                    out=str(directory / "eval"), max_length=config.max_length,
                                                    batch_size=config.generation_batch_size, device=config.device,
                                                    progress=config.progress)))
        record["eval"] = {"in_domain_accuracy": evaluated["in_domain_accuracy"],
                          "out_of_domain_accuracy": evaluated["out_of_domain_accuracy"],
                          "sets": {name: s["accuracy"] for name, s in evaluated["sets"].items()}}
    return record, next_model


def _round_data(config: IterateConfig, directory: Path, r: int, problems, generated: dict) -> dict:
    """data.jsonl of the round (each row with its `iterate` provenance: round and source) and what went in it."""
    accepted: dict[int, list[dict]] = {}
    for source in ("realign", "rejection"):
        if source not in generated:
            continue
        path = directory / source / ("realigned.jsonl" if source == "realign" else "rejection.jsonl")
        for line in path.read_text().splitlines():
            row = json.loads(line)
            index = row[source]["source_row"] - 1
            accepted.setdefault(index, []).append({**row, "iterate": {"round": r, "source": source}})
    rows, by_source, fallback = [], Counter(), 0
    for example in problems.examples:
        kept = accepted.get(example.index, [])
        by_source.update(row["iterate"]["source"] for row in kept)
        if not kept and config.fallback == "reference":
            kept = [{**example.row, "prompt": example.prompt, "completion": example.completion,
                     "iterate": {"round": r, "source": "reference"}}]
            fallback += 1
        rows.extend(kept)
    problems_accepted = sum(bool(accepted.get(e.index)) for e in problems.examples)
    if not rows:
        raise EmptyRound(f"round {r}: no problem of {config.data} has an accepted output, and --fallback skip leaves "
                         f"nothing to train on (use --fallback reference, more --k or --max-new-tokens)")
    made = {
        "problems": len(problems.examples), "problems_accepted": problems_accepted,
        "accepted_share": problems_accepted / len(problems.examples), "accepted_rows": dict(by_source),
        "fallback_rows": fallback, "skipped_problems": len(problems.examples) - problems_accepted - fallback,
        "rows": len(rows), "skipped_input": dict(Counter(e.reason for e in problems.skipped)),
        "generation": {source: {k: summary.get(k) for k in ("kept", "decoded", "dropped", "samples", "samples_correct",
                                                            "samples_not_kept") if k in summary}
                       for source, summary in generated.items()},
    }
    aside = directory / "data.jsonl.new"
    with aside.open("w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    os.replace(aside, directory / "data.jsonl")
    made["tokens_per_example"] = _tokens_per_example(config, directory / "data.jsonl")
    (directory / "data_summary.json").write_text(json.dumps(made, indent=2) + "\n")
    return made


def _tokens_per_example(config: IterateConfig, path: Path) -> float:
    """Mean prompt + completion tokens of the round's rows, tokenized as training renders them."""
    from transformers import AutoTokenizer

    from ..inputs.models import adapter_base, resolve_model
    from ..inputs.rendering import tokenize_dataset

    name = config.model
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(adapter_base(name) or name))
    tokenized, _ = tokenize_dataset(load_examples(str(path)).examples, tokenizer, max_length=config.max_length)
    return sum(len(t.input_ids) for t in tokenized) / len(tokenized)


def _train_config(config: IterateConfig, directory: Path, model: str, tokens_per_example: float, rows: int,
                  r: int) -> TrainConfig:
    """The round's `opsft train`: every training option of the command, on the round's data, resumed if cut off."""
    options = {f.name: getattr(config, f.name) for f in fields(TrainConfig)}
    options.update(model=model, data=str(directory / "data.jsonl"), prompt_field=None, completion_field=None,
                   messages_field=None, limit=None, skip_invalid=False, output_dir=str(directory / "train"),
                   resume=True, overwrite=False, seed=config.seed + r - 1)
    if config.token_budget is not None:
        batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * state().num_processes
        options["max_steps"] = budget_steps(config.token_budget / config.rounds, rows, batch, tokens_per_example)
    return TrainConfig(**options)


def _round_model(config: IterateConfig, directory: Path) -> str:
    """The model the round trained: train/final, or with --lora that adapter merged into its base (merged/), so
    that the next round starts from the whole model and trains a fresh adapter on it."""
    final = directory / "train" / "final"
    if not config.lora:
        return str(final)
    merged = directory / "merged"

    def merge():
        if not (merged / "config.json").exists():
            from ..inputs.models import load_model

            model, tokenizer = load_model(str(final), device="cpu")
            aside = directory / "merged.new"
            shutil.rmtree(aside, ignore_errors=True)
            model.save_pretrained(aside)
            tokenizer.save_pretrained(aside)
            os.replace(aside, merged)
    on_main(merge)
    return str(merged)


def _write_rounds(out: Path, rounds: list[dict]) -> None:
    aside = out / "rounds.jsonl.new"
    aside.write_text("".join(json.dumps(r) + "\n" for r in rounds))
    os.replace(aside, out / "rounds.jsonl")


def _finish(out: Path, config: IterateConfig, rounds: list[dict], model: str) -> dict:
    """The link to the final model, report.md and rounds.png; the summary."""
    final = out / "final"
    if final.is_symlink() or final.exists():
        final.unlink()
    final.symlink_to(Path(model).resolve().relative_to(out.resolve()), target_is_directory=True)
    summary = {"run": config.settings(), "rounds": rounds, "final_model": str(final)}
    (out / "iterate_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = format_rounds(rounds)
    (out / "report.md").write_text(f"# opsft iterate: {config.loss} on {config.source}, fallback {config.fallback}\n\n"
                                   f"{report}\n")
    plot_rounds(rounds, out / "rounds.png")
    print(f"\nopsft iterate ({out}): {config.rounds} rounds of {config.loss} on {config.source} "
          f"(fallback {config.fallback}); final model {final}\n{report}", flush=True)
    return summary


def format_rounds(rounds: list[dict]) -> str:
    evals = any("eval" in r for r in rounds)
    lines = ["| round | accepted (share) | rows by source | fallback | phi_mean ± sem | steps | tokens | loss |"
             + (" in-domain | out-of-domain |" if evals else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if evals else "")]
    for r in rounds:
        sources = ", ".join(f"{k} {v}" for k, v in r["accepted_rows"].items()) or "none"
        train = r["train"]
        loss = f"{train['train_loss']:.4f}" if isinstance(train.get("train_loss"), float) else "-"
        line = (f"| {r['round']} | {r['problems_accepted']} of {r['problems']} ({r['accepted_share']:.0%}) | {sources} "
                f"| {r['fallback_rows']} | {r['phi_mean']:+.3f} ± {_number(r['phi_mean_sem'])} | {train['steps']} "
                f"| {train['train_tokens']} | {loss} |")
        if evals:
            e = r.get("eval", {})
            line += f" {_number(e.get('in_domain_accuracy'))} | {_number(e.get('out_of_domain_accuracy'))} |"
        lines.append(line)
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def plot_rounds(rounds: list[dict], path: Path) -> None:
    """Accepted share and the round data's phi_mean by round (and accuracy with an eval suite)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    panels = 3 if any("eval" in r for r in rounds) else 2
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2))
    axes[0].plot(x, [r["accepted_share"] for r in rounds], marker="o")
    axes[0].set(title="problems with an accepted output", xlabel="round", ylim=(0, 1.05))
    axes[1].errorbar(x, [r["phi_mean"] for r in rounds],
                     yerr=[0 if math.isnan(r["phi_mean_sem"] or math.nan) else 1.96 * r["phi_mean_sem"]
                           for r in rounds], marker="o", capsize=3)
    axes[1].axhline(0, color="grey", lw=0.8, ls="--")
    axes[1].set(title="round data's phi_mean (generating model)", xlabel="round")
    if panels == 3:
        for key, label in (("in_domain_accuracy", "in-domain"), ("out_of_domain_accuracy", "out-of-domain")):
            values = [r.get("eval", {}).get(key) for r in rounds]
            if any(v is not None for v in values):
                axes[2].plot(x, [math.nan if v is None else v for v in values], marker="o", label=label)
        axes[2].set(title="accuracy of the round's model", xlabel="round", ylim=(0, 1.05))
        axes[2].legend()
    for ax in axes:
        ax.set_xticks(x)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
