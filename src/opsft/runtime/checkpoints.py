"""A training run's output directory: whose it is, which checkpoints are its own, and what a resume carries.

`opsft train` records its settings and the fingerprint of its tokenized data in `opsft_run.json` before
the first step, with a run id. Every checkpoint it saves gets `opsft_checkpoint.json`: that run id, the
wall time and the training tokens up to it (TRL restarts its token count at zero on resume).

    fresh run   refused where the directory holds an earlier run (--resume continues it, --overwrite discards it)
    --resume    refused where the recorded settings or data differ; continues from the newest checkpoint
                this run wrote (never one another run left there); a finished run is returned as it is
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import TrainerCallback

from . import processes
from .errors import OpsftError
from .resumable import settings_diff

RUN_FILE = "opsft_run.json"
CHECKPOINT_FILE = "opsft_checkpoint.json"
# what a run leaves besides its checkpoint-N/ directories
OUTPUTS = ("final", "train_summary.json", "skipped.jsonl", "reference_logprobs.jsonl", RUN_FILE)
NOT_SETTINGS = ("output_dir", "resume", "overwrite", "progress", "report_to", "logging_steps", "save_steps",
                "save_total_limit", "device",  # they change where and how a run reports, not what it learns,
                "logits_memory_mb")  # nor the way to the per-token statistics (engine/lm_head.py: equal to round-off)


@dataclass
class TrainingRun:
    out: Path
    run_id: str
    resume_from: str | None  # the checkpoint to continue from
    before_seconds: float = 0.0  # wall time and tokens of the run up to that checkpoint
    before_tokens: int = 0
    finished: dict | None = None  # with --resume on a finished run: its summary

    @classmethod
    def claim(cls, out: Path, config, *, inputs_sha256: str) -> TrainingRun:
        """Check the directory against `config` (see the module doc) and record this run in it. Under
        `accelerate launch` every process checks the directory as it was, then the main process writes."""
        state = processes.state()
        settings = json.loads(json.dumps(
            {**{k: v for k, v in asdict(config).items() if k not in NOT_SETTINGS}, "inputs_sha256": inputs_sha256},
            default=str))
        record_path = out / RUN_FILE
        earlier = [] if config.overwrite else _earlier_outputs(out)
        record = json.loads(record_path.read_text()) if record_path.is_file() and earlier else None
        if earlier and not config.resume:
            raise OpsftError(f"{out} holds an earlier training run ({_describe(earlier)}); "
                             f"pass --resume to continue it, --overwrite to discard it, or use another --output-dir")
        if earlier and record is None:
            raise OpsftError(f"{out}: {_describe(earlier)} were not written by opsft train "
                             f"(no {RUN_FILE}), so they cannot be resumed; --overwrite discards them")
        if record is not None and record["settings"] != settings:
            raise OpsftError(f"{out} holds a training run with other settings or data "
                             f"({settings_diff(record['settings'], settings)}); it is not resumed: use another "
                             f"--output-dir, or --overwrite to discard it")
        state.wait_for_everyone()  # every process has looked before the main one changes anything
        if state.is_main_process and record is None:
            for path in _earlier_outputs(out):  # with --overwrite
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            out.mkdir(parents=True, exist_ok=True)
            record_path.write_text(json.dumps({"run_id": uuid.uuid4().hex, "settings": settings}, indent=2) + "\n")
        state.wait_for_everyone()
        run_id = json.loads(record_path.read_text())["run_id"]
        summary = out / "train_summary.json"
        if summary.is_file() and (out / "final").is_dir():
            print(f"opsft: {out} already holds this run, finished; nothing to do (--overwrite trains it again)",
                  flush=True)
            return cls(out, run_id, None, finished=json.loads(summary.read_text()))
        own = [(c, mark) for c in _checkpoints(out) if (mark := _mark(c)) and mark.get("run_id") == run_id]
        if not own:
            return cls(out, run_id, None)
        checkpoint, mark = own[-1]
        return cls(out, run_id, str(checkpoint), before_seconds=mark["train_seconds"],
                   before_tokens=mark.get("train_tokens") or 0)

    def callback(self, trainer) -> RunProgress:
        """The callback that marks each checkpoint as this run's; it restores TRL's token count on resume."""
        if self.resume_from is not None and hasattr(trainer, "_total_train_tokens"):
            trainer._total_train_tokens = self.before_tokens
        return RunProgress(self.run_id, self.before_seconds, trainer)


class RunProgress(TrainerCallback):
    """Wall time (`before_seconds`, earlier runs, plus this run's) and tokens, written into every checkpoint."""

    def __init__(self, run_id: str, before_seconds: float, trainer):
        self.run_id, self.before_seconds, self.trainer = run_id, before_seconds, trainer
        self.started = time.perf_counter()

    def this_run(self) -> float:
        return time.perf_counter() - self.started

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            (checkpoint / CHECKPOINT_FILE).write_text(json.dumps({
                "run_id": self.run_id, "train_seconds": self.before_seconds + self.this_run(),
                "train_tokens": getattr(self.trainer, "_total_train_tokens", None)}))


def _checkpoints(out: Path) -> list[Path]:
    """checkpoint-N directories, oldest step first."""
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.removeprefix("checkpoint-").isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("checkpoint-")))


def _mark(checkpoint: Path) -> dict | None:
    try:
        return json.loads((checkpoint / CHECKPOINT_FILE).read_text())
    except (OSError, json.JSONDecodeError):  # no mark: not ours, or killed between its save and its mark
        return None


def _describe(paths: list[Path]) -> str:
    """'checkpoint-5 ... checkpoint-25 (5 checkpoints), final, ...': checkpoints by step, then the other outputs."""
    checkpoints = [p.name for p in paths if p.name.startswith("checkpoint-")]
    others = [p.name for p in paths if not p.name.startswith("checkpoint-")]
    if len(checkpoints) > 2:
        checkpoints = [f"{checkpoints[0]} ... {checkpoints[-1]} ({len(checkpoints)} checkpoints)"]
    return ", ".join(checkpoints + others)


def _earlier_outputs(out: Path) -> list[Path]:
    shards = sorted(out.glob("reference_logprobs-*-of-*.jsonl"))  # its logs under `accelerate launch`
    return [p for p in _checkpoints(out) + [out / name for name in OUTPUTS] + shards if p.exists()]
