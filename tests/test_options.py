"""Options are checked when a config is built: types as the flags parse them, ranges, choices, rules, YAML."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch

from opsft.cli import COMMANDS
from opsft.commands.eval import EvalSet
from opsft.commands.score import ScoreConfig
from opsft.methods.losses import LossConfig
from opsft.runtime.errors import OpsftError
from opsft.runtime.options import check_device, read_yaml, template_rule, typed

REQUIRED = {"model": "m", "data": "d", "runs": ["r"]}
CONFIGS = {name: cls for name, (cls, _, _) in COMMANDS.items()}
# numbers that may take any value: thresholds on phi, the minimum phi of a kept rewrite
UNBOUNDED = {("score", "in_threshold"), ("score", "out_threshold"), ("realign", "min_phi_mean")}


def build(cls, **values):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in REQUIRED.items() if k in names}, **values})


def numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if a is not type(None)]
        if typing.get_origin(hints[f.name]) is list:
            kind = list(typing.get_args(hints[f.name]))
        if kind and kind[0] in (int, float) and kind[0] is not bool:
            yield f, kind[0]


@pytest.mark.parametrize("command", CONFIGS)
def test_every_numeric_option_of_every_command_has_a_range_that_is_enforced(command):
    cls = CONFIGS[command]
    for f, kind in numeric_fields(cls):
        meta = f.metadata
        bounds = [meta.get(k) for k in ("at_least", "above", "at_most", "below")]
        if (command, f.name) in UNBOUNDED:
            continue
        assert any(b is not None for b in bounds), f"{command} --{f.name} has no range"
        flag = "--" + f.name.replace("_", "-")
        low = meta.get("above") if meta.get("above") is not None else meta.get("at_least")
        high = meta.get("below") if meta.get("below") is not None else meta.get("at_most")
        outside = []
        if low is not None:
            outside.append(low if meta.get("above") is not None else low - (1 if kind is int else 0.5))
        if high is not None:
            outside.append(high if meta.get("below") is not None else high + (1 if kind is int else 0.5))
        for value in outside:
            value = [kind(value)] if typing.get_origin(typing.get_type_hints(cls)[f.name]) is list else kind(value)
            with pytest.raises(OpsftError, match=f"^{flag} must be"):
                build(cls, **{f.name: value})


@pytest.mark.parametrize("value, hint, expected", [
    ("1e-5", float, 1e-5), ("8", int, 8), (8, float, 8.0), (2.0, int, 2), (None, int | None, None),
    ([1, "2"], list[int], [1, 2]), ("a", str | dict | None, "a"), ({"data": "x"}, str | dict | None, {"data": "x"}),
    (False, bool, False),
])
def test_values_are_converted_as_the_flags_would_convert_them(value, hint, expected):
    assert typed(value, hint, "--x") == expected


@pytest.mark.parametrize("value, hint, message", [
    ("no", bool, "--x must be true or false (got 'no')"),
    (1, bool, "--x must be true or false (got 1)"),
    ("eight", int, "--x must be a whole number (got 'eight')"),
    (8.5, int, "--x must be a whole number (got 8.5)"),
    (True, int, "--x must be a whole number (got True)"),
    ("nan", float, "--x must be a number (got nan)"),
    ([1, 2], float, "--x must be a number"),
    (3, str, "--x must be a string (got 3)"),
    ("a,b", list[str], "--x must be a list"),
    (None, int, "--x needs a value"),
])
def test_a_value_of_the_wrong_type_names_the_flag(value, hint, message):
    with pytest.raises(OpsftError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        typed(value, hint, "--x")


def test_range_messages_name_the_bound():
    with pytest.raises(OpsftError, match=r"^--top-p must be in \(0, 1\] \(got 1.5\)$"):
        build(CONFIGS["eval"], top_p=1.5)
    with pytest.raises(OpsftError, match=r"^--lora-dropout must be in \[0, 1\) \(got 2.0\)$"):
        build(CONFIGS["train"], lora_dropout=2.0)
    with pytest.raises(OpsftError, match=r"^--batch-size must be >= 1 \(got -2\)$"):
        build(ScoreConfig, batch_size=-2)


@pytest.mark.parametrize("command, values, message", [
    ("score", dict(in_threshold=-0.2, out_threshold=-0.1), "--in-threshold (-0.2) must be >= --out-threshold"),
    ("realign", dict(h1=0.7, h2=0.3), "--h1 (0.7) must be <= --h2 (0.3)"),
    ("realign", dict(hint_template="{question} {answer}"), "unknown placeholder(s) {answer}"),
    ("realign", dict(hint_template="{question} only"), "--hint-template: must contain {solution}"),
    ("realign", dict(analysis_template="{question} {solution} {0}"), "unknown placeholder(s) {0}"),
    ("realign", dict(hint_template="{question {solution}"), "not a valid template"),
    ("eval", dict(k=4), "greedy decoding (temperature 0) gives one answer per problem"),
    ("eval", dict(data="a", suite="b"), "give --data or --suite, not both"),
    ("train", dict(max_steps=0), "--max-steps must be > 0, or -1"),
    ("train", dict(loss="sftq"), "--loss sftq needs --quality-field"),
    ("train", dict(lora_target_modules="q_proj,,v_proj"), "--lora-target-modules 'q_proj,,v_proj'"),
    ("train", dict(resume=True, overwrite=True), "--resume and --overwrite exclude each other"),
    ("train", dict(lr_scheduler_type="warmup"), "unknown lr scheduler type 'warmup' for --lr-scheduler-type"),
    ("train", dict(idft_gamma_min=3.0), "need --idft-gamma-min <= --idft-gamma-max"),
    ("compare", dict(names=["a", "b"]), "--names: one per run (1), got 2"),
    ("lab", dict(methods=["sft", "ppo"]), "unknown lab method 'ppo'"),
    ("lab", dict(seeds=[]), "--seeds: give at least one seed"),
])
def test_rules_between_options(command, values, message):
    with pytest.raises(OpsftError) as error:
        build(CONFIGS[command], **values)
    assert message in str(error.value)


def test_a_suite_set_is_checked_like_the_command():
    with pytest.raises(OpsftError, match=r"^k must be >= 1 \(got 0\)"):
        EvalSet("s", "in_domain", "d.jsonl", k=0)
    with pytest.raises(OpsftError, match="greedy decoding"):
        EvalSet("s", "in_domain", "d.jsonl", k=2)


def test_a_loss_config_built_from_python_is_checked_too():
    with pytest.raises(OpsftError, match="--iw-w-max must be > 0"):
        LossConfig("iwsft", iw_w_max=0.0)
    assert math.isinf(LossConfig("iwsft", iw_w_max=float("inf")).iw_w_max)


def test_yaml_files_refuse_duplicate_keys_malformed_text_and_directories(tmp_path):
    (tmp_path / "dup.yaml").write_text("a: 1\nnested:\n  b: 2\n  b: 3\n")
    with pytest.raises(OpsftError, match=r"--config .*dup.yaml: malformed YAML at line 4, column 3: key 'b' is given "
                                         r"twice"):
        read_yaml(tmp_path / "dup.yaml", "--config")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(OpsftError, match=r"bad.yaml: malformed YAML at line 2"):
        read_yaml(tmp_path / "bad.yaml", "--config")
    with pytest.raises(OpsftError, match="is a directory, not a file"):
        read_yaml(tmp_path, "--config")
    with pytest.raises(OpsftError, match="no such file"):
        read_yaml(tmp_path / "missing.yaml", "--config")
    (tmp_path / "latin1.yaml").write_bytes("a: caf\xe9\n".encode("latin-1"))
    with pytest.raises(OpsftError, match="is not UTF-8 text"):
        read_yaml(tmp_path / "latin1.yaml", "--suite")
    (tmp_path / "ok.yaml").write_text("a: 1\nb: {c: 2}\n")
    assert read_yaml(tmp_path / "ok.yaml", "--config") == {"a": 1, "b": {"c": 2}}


def test_devices_are_checked_before_anything_loads():
    check_device("cpu")
    with pytest.raises(OpsftError, match="'bogus': not a device"):
        check_device("bogus")
    with pytest.raises(OpsftError, match="not supported"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(OpsftError, match="--device cuda: CUDA is not available here"):
            check_device("cuda")
    with pytest.raises(OpsftError, match="--device"):
        build(ScoreConfig, device="cuda:99" if torch.cuda.is_available() else "cuda")


def test_template_rule():
    assert template_rule("{question} and {solution}", {"question", "solution"}, "--t")[0]
    assert template_rule("{{literal}} {question} {solution}", {"question", "solution"}, "--t")[0]
    ok, message = template_rule("{question} {solutoin}", {"question", "solution"}, "--t")
    assert not ok and "unknown placeholder(s) {solutoin}" in message
