"""Command options: one dataclass per command, whose fields are its flags and its YAML keys.

Every config is checked when it is built, from flags, a YAML file or Python alike, before any model
loads: each value has the type its flag parses to (a YAML string is converted as the flag would convert
it; `"no"` is not a boolean), lies in its range, is one of its choices, and the command's own rules
between options hold. A failure is an OpsftError naming the flag: ``--batch-size must be >= 1 (got -2)``.

    @dataclass
    class ScoreConfig(Options):
        batch_size: int = option(8, "examples per forward pass", at_least=1)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import string
import types
import typing
from pathlib import Path

from .errors import OpsftError

REQUIRED = dataclasses.MISSING


def option(default=REQUIRED, help_text: str = "", *, at_least=None, above=None, at_most=None, below=None,
           choices=None, output_dir: bool = False, device: bool = False, factory=None, yaml_only: bool = False):
    """A config field with its command-line help and its checks.

    at_least / above / at_most / below: the closed and open bounds of a number; choices: the values
    allowed; output_dir: a directory the command writes (it may not be a file); device: a torch device
    that exists here; factory: a default built per instance (dict, list); yaml_only: no flag."""
    metadata = {"help": help_text, "at_least": at_least, "above": above, "at_most": at_most, "below": below,
                "choices": choices, "output_dir": output_dir, "device": device, "yaml_only": yaml_only}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Options:
    """Base of every command's config: `__post_init__` checks every field, then `rules()`."""

    def __post_init__(self):
        check_options(self)

    def flag(self, name: str) -> str:
        """How an option is named in messages."""
        return "--" + name.replace("_", "-")

    def rules(self) -> list[tuple[bool, str]]:
        """The command's rules between options, as (holds, message to show when it does not)."""
        return []


def check_options(config: Options) -> None:
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        flag = config.flag(f.name)
        value = typed(getattr(config, f.name), hints[f.name], flag)
        setattr(config, f.name, value)
        if value is None:
            continue
        meta = f.metadata
        _check_range(value, meta, flag)
        if meta.get("choices") is not None:
            for item in value if isinstance(value, list) else [value]:
                if item not in meta["choices"]:
                    raise OpsftError(f"unknown {f.name.replace('_', ' ')} {item!r} for {flag}: choose one of "
                                     f"{', '.join(map(str, meta['choices']))}")
        if meta.get("output_dir") and Path(value).exists() and not Path(value).is_dir():
            raise OpsftError(f"{flag} {value}: is a file, not a directory")
        if meta.get("device"):
            check_device(value, flag)
    for holds, message in config.rules():
        if not holds:
            raise OpsftError(message)


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def typed(value, hint, flag: str):
    """`value` as type `hint` (as the flag's parser would make it), or an OpsftError naming the flag."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        # str | dict: the one the value already is, else the first (as the flag parses it)
        hint = next((a for a in args if isinstance(value, typing.get_origin(a) or a)), args[0])
    if value is None:
        raise OpsftError(f"{flag} needs a value")
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise OpsftError(f"{flag} must be a list (got {value!r})")
        (item,) = typing.get_args(hint)
        return [typed(v, item, flag) for v in value]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise OpsftError(f"{flag} must be a mapping of name: value (got {value!r})")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise OpsftError(f"{flag} must be true or false (got {value!r})")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise OpsftError(f"{flag} must be a string (got {value!r})")
        return value
    if hint in (int, float):
        return _number(value, hint, flag)
    raise TypeError(f"{flag}: options of type {hint} are not supported")  # a bug in a config class


def _number(value, kind, flag: str):
    what = "a whole number" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OpsftError(f"{flag} must be {what} (got {value!r})")
    try:
        number = kind(value)  # a string as the flag's parser reads it: "1e-5", "8"
    except (TypeError, ValueError):
        raise OpsftError(f"{flag} must be {what} (got {value!r})") from None
    if kind is int and isinstance(value, float) and number != value:
        raise OpsftError(f"{flag} must be {what} (got {value!r})")
    if kind is float and math.isnan(number):
        raise OpsftError(f"{flag} must be a number (got nan)")
    return number


def _check_range(value, meta, flag: str) -> None:
    low, low_open = (meta.get("above"), True) if meta.get("above") is not None else (meta.get("at_least"), False)
    high, high_open = (meta.get("below"), True) if meta.get("below") is not None else (meta.get("at_most"), False)
    if low is None and high is None:
        return
    for number in value if isinstance(value, list) else [value]:
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and (number >= high if high_open else number > high)
        if too_low or too_high:
            if high is None:
                rule = f"{'>' if low_open else '>='} {low}"
            elif low is None:
                rule = f"{'<' if high_open else '<='} {high}"
            else:
                rule = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise OpsftError(f"{flag} must be {rule} (got {number})")


def check_device(value: str, flag: str = "--device") -> None:
    """A torch device name that this machine has: cpu, cuda, cuda:N (N < the GPU count), mps."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise OpsftError(f"{flag} {value!r}: not a device (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise OpsftError(f"{flag} {value}: CUDA is not available here ({why}); use --device cpu or leave it out")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OpsftError(f"{flag} {value}: there are {torch.cuda.device_count()} GPUs (cuda:0 ...)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise OpsftError(f"{flag} {value}: MPS is not available here; use --device cpu or leave it out")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise OpsftError(f"{flag} {value}: not supported (use cpu, cuda, cuda:N or mps)")


def template_rule(template: str, placeholders: set[str], flag: str) -> tuple[bool, str]:
    """A rule: `template` is a str.format template using only `placeholders`, each of them at least once."""
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        return False, f"{flag}: not a valid template ({e}); write literal braces as {{{{ and }}}}"
    unknown, missing = used - placeholders, placeholders - used
    names = ", ".join("{" + p + "}" for p in sorted(placeholders))
    if unknown:
        return False, (f"{flag}: unknown placeholder(s) {', '.join('{' + u + '}' for u in sorted(unknown))} "
                       f"(it takes {names}; write literal braces as {{{{ and }}}})")
    return not missing, f"{flag}: must contain {', '.join('{' + m + '}' for m in sorted(missing))}"


def read_yaml(path: str | Path, what: str):
    """A YAML file's contents; a missing or unreadable file, malformed YAML or a key given twice is an
    OpsftError naming `what` (the flag) and the place."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise OpsftError(f"{what} {path}: {'is a directory, not a file' if path.is_dir() else 'no such file'}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader())
    except UnicodeDecodeError:
        raise OpsftError(f"{what} {path}: is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise OpsftError(f"{what} {path}: malformed YAML{where}: {problem}") from None


def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader
