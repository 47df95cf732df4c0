"""The `opsft` command. Each subcommand is a config dataclass (flags, or a YAML file via --config;
flags win) handed to the function that runs it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import traceback
import types
import typing

from .commands.compare import CompareConfig, run_compare
from .commands.eval import EvalConfig, run_eval
from .commands.iterate import IterateConfig, run_iterate
from .commands.prefs import PrefsConfig, run_prefs
from .commands.realign import RealignConfig, run_realign
from .commands.rejection import RejectionConfig, run_rejection
from .commands.score import ScoreConfig, run_score
from .commands.train import TrainConfig, run_train
from .lab.study import LabConfig, run_lab
from .runtime.errors import OpsftError
from .runtime.locking import output_lock
from .runtime.options import read_yaml, typed
from .runtime.processes import end_process_group

COMMANDS = {
    "score": (ScoreConfig, run_score,
              "DDT: how far a dataset lies from a model's own distribution (phi per token and per example)"),
    "realign": (RealignConfig, run_realign,
                "Hinted Decoding: rewrite reference solutions into the model's own distribution, checked"),
    "train": (TrainConfig, run_train,
              "fine-tune with SFT, DFT, IDFT, iw-SFT, SFT(Q), EAFT, ASFT (or DPO, SimPO) on TRL (full or LoRA; "
              "resumable)"),
    "eval": (EvalConfig, run_eval,
             "accuracy on in-domain and out-of-domain sets (greedy or avg@k / pass@k, 95% CIs), and drift"),
    "prefs": (PrefsConfig, run_prefs,
              "preference pairs (prompt/chosen/rejected) from the model's own checked samples, for DPO/SimPO"),
    "rejection": (RejectionConfig, run_rejection,
                  "training data from the model's own correct answers (rejection sampling), every drop counted"),
    "iterate": (IterateConfig, run_iterate,
                "iterative on-policy SFT: rounds of generate (realign / rejection) -> check -> train, each round's "
                "data from the model being trained (resumable)"),
    "compare": (CompareConfig, run_compare,
                "several run / eval directories side by side: one table (markdown, CSV) and one bar chart"),
    "lab": (LabConfig, run_lab,
            "the whole study in one command: data, base eval, DDT, realign, train every method, eval, report; "
            "every option left out takes the --profile's value (docs/lab.md)"),
}


CONTROL_COMMANDS = {  # opsft control COMMAND: continuous-control policies (opsft.control)
    "generate": ("GenerateConfig", "run_generate",
                 "make a dataset here (scripted InvertedPendulum, or a SAC run's replay buffer / rollouts), cached "
                 "in $OPSFT_CACHE/control with a manifest"),
    "train": ("TrainConfig", "run_train",
              "BC, filtered BC, iw-SFT, SFT(Q), iw-SFT(Q) on offline episodes (stage A: the reference; stage C: "
              "the method on curated episodes); resumable"),
    "eval": ("EvalConfig", "run_eval", "returns (and D4RL normalised scores) of a policy in its environment"),
    "score": ("ScoreConfig", "run_score",
              "DDT for policies: phi = log pi(a|s) + H(pi(.|s)) of demonstrations, all and curated"),
    "baseline": ("BaselineConfig", "run_baseline",
                 "offline-RL baselines from d3rlpy (BC, TD3+BC, IQL, CQL) on the same data and evaluation"),
    "lab": ("ControlLabConfig", "run_control_lab",
            "every method x seeds + the d3rlpy baselines on the embedded default: table, plots, HTML"),
}


def _control(name: str):
    """(config class, run function) of `opsft control NAME`."""
    import importlib

    module = importlib.import_module("opsft.control.lab" if name == "lab" else "opsft.control.commands")
    config_name, run_name, _ = CONTROL_COMMANDS[name]
    return getattr(module, config_name), getattr(module, run_name)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other opsft error (exit 2)."""

    def error(self, message):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 a problem with what was asked or given (one line on stderr:
    `opsft: error: ...`), 1 an unexpected error (a bug: one line, the traceback saved to a file), 130 interrupted."""
    parser = _Parser(prog="opsft", description="On-policy supervised fine-tuning toolkit.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--traceback", action="store_true",
                        help="on an unexpected error, print Python's traceback instead of saving it to a file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, (config_cls, _, help_text) in COMMANDS.items():
        _add_command(sub, name, config_cls, help_text)
    control_help = "continuous-control policies: iw-SFT, filtered BC and SFT(Q) from offline episodes (docs/control.md)"
    control = sub.add_parser("control", help=control_help, description=control_help)
    control_sub = control.add_subparsers(dest="control_command", required=True, metavar="COMMAND",
                                         parser_class=_Parser)
    for name, (_, _, help_text) in CONTROL_COMMANDS.items():
        _add_command(control_sub, name, _control(name)[0], help_text)
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        _say(f"opsft: error: {error}")
        return 2
    if args.command == "control":
        config_cls, run = _control(args.control_command)
        args.command = f"control {args.control_command}"
    else:
        config_cls, run, _ = COMMANDS[args.command]
    try:
        config = _build_config(config_cls, vars(args))
        with output_lock(_output_dir(config), f"opsft {args.command}"):
            run(config)
    except OpsftError as error:
        _say(f"opsft: error: {error}")
        return 2
    except KeyboardInterrupt:
        _say("opsft: interrupted; rerun the same command to resume")
        return 130
    except Exception as error:  # a bug, or a case opsft should have caught: one line, the traceback kept
        if args.traceback:
            raise
        report = _save_traceback(args.command)
        _say(f"opsft: error: unexpected {type(error).__name__}: {_one_line(error)} (a bug in opsft, or a case it "
             f"should explain; the traceback is in {report}, or rerun with opsft --traceback)")
        return 1
    finally:
        end_process_group()
    return 0


def _say(line: str) -> None:
    """One line on stderr in one write: under `accelerate launch` every process may say it, and print's two writes
    (the text, then the newline) from two processes can interleave into one line."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _add_command(sub, name: str, config_cls, help_text: str) -> None:
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    command = sub.add_parser(name, help=help_text, description=help_text)
    command.add_argument("--config", help="YAML file of options (flags given here override it)")
    _add_dataclass_arguments(command, config_cls)


def _output_dir(config) -> str:
    (name,) = [f.name for f in dataclasses.fields(config) if f.metadata.get("output_dir")]
    return getattr(config, name)


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _save_traceback(command: str) -> str:
    prefix = f"opsft-{command.replace(' ', '-')}-"  # "control train" -> opsft-control-train-
    with tempfile.NamedTemporaryFile("w", prefix=prefix, suffix=".txt", delete=False) as f:
        f.write(f"opsft {_version()}: {' '.join(sys.argv)}\n\n{traceback.format_exc()}")
    return f.name


def _add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("yaml_only"):
            continue
        kind = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        many = typing.get_origin(kind) is list
        kind = typing.get_args(kind)[0] if many else kind
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        shown = not required and f.default is not None  # None: unset, the help says what happens then
        help_text = (f.metadata.get("help", "") + (f" (default: {f.default})" if shown else "")).replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                                nargs="+" if many else None, help=help_text + (" [required]" if required else ""))


def _base_type(hint):
    """int for `int | None`, etc."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]  # str | dict: a flag takes a str
    return hint


def _build_config(cls, args: dict):
    """The command's config from --config (YAML) and the flags given (which win); checked by the config class."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    if args.get("config"):
        path = args["config"]
        loaded = read_yaml(path, "--config")
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise OpsftError(f"--config {path}: expected a mapping of option: value")
        values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise OpsftError(f"--config {path}: unknown options {unknown} (see opsft COMMAND --help)")
        hints = typing.get_type_hints(cls)  # each value's type, named by the file and key it came from
        values = {k: typed(v, hints[k], f"--config {path}: {k}") for k, v in values.items()}
    values.update({k: v for k, v in args.items() if k in names})
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in values]
    if missing:
        raise OpsftError("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return cls(**values)


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
