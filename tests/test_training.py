"""Training with the loss family on TRL: every method learns, accumulation invariance, parity with TRL,
resume, multi-process, and bad configurations caught before the first step."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import launch, make_model
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from opsft.commands.train import TrainConfig, run_train
from opsft.engine.trl_setup import CHECKPOINTING_OPTIONS, checkpointing_option, trl_arguments
from opsft.inputs.models import load_model
from opsft.inputs.rendering import to_trl_record
from opsft.runtime.checkpoints import CHECKPOINT_FILE
from opsft.runtime.errors import DataError, OpsftError

ROWS = [{"question": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}. #### {a + b}",
         "quality": q} for (a, b), q in zip([(1, 2), (17, 25), (3, 4), (10, 32), (5, 5), (6, 7), (8, 9), (2, 2)],
                                            [1.0, 0.5, 2.0, 1.0, 0.0, 1.5, 1.0, 0.25])]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny model with ordinary (small) initialisation: its distributions are broad, as a pretrained
    model's are on unfamiliar text, so every method has gradient to work with."""
    path = tmp_path_factory.mktemp("tiny-train")
    make_model(len(tokenizer), init=0.02).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


def config(model_dir, data_path, out, **overrides):
    base = dict(model=str(model_dir), data=data_path, output_dir=str(out), prompt_field="question",
                completion_field="solution", quality_field="quality", per_device_train_batch_size=4,
                logging_steps=1, learning_rate=3e-3, seed=0, progress=False, save_steps=1000)
    return TrainConfig(**{**base, **overrides})


def logged(summary, key):
    return [h[key] for h in summary["log_history"] if key in h]


METHODS = {
    "sft": {}, "dft": {}, "idft": {}, "idft_legacy": {},
    "iwsft": {}, "iwsft_token": {"loss": "iwsft", "iw_level": "token"}, "iwsft_frozen": {"loss": "iwsft",
                                                                                            "iw_reference": "frozen"},
    "sftq": {}, "sftq_sample": {"loss": "sftq", "quality_mode": "sample"},
    "eaft": {}, "asft": {}, "asft_token": {},
    "asft_token_frozen": {"loss": "asft_token", "iw_reference": "frozen", "asft_anchor": 1.0},
}


@pytest.mark.parametrize("name", METHODS)
def test_every_method_lowers_the_nll_and_changes_the_weights(model_dir, data_path, tmp_path, name):
    options = {"loss": name, **METHODS[name]}
    summary = run_train(config(model_dir, data_path, tmp_path, max_steps=12, **options))
    nll = logged(summary, "nll")
    assert len(nll) == 12
    if name == "idft_legacy":
        # SPEC §2: with p**gamma left in the gradient, tokens with p < exp(-1/gamma) (here nearly all: the
        # model is broad) are pushed *down*. The ablation must show the defect it exists to show.
        assert nll[-1] > nll[0] + 0.5, nll
    else:
        assert nll[-1] < nll[0] - 0.5, nll

    before = AutoModelForCausalLM.from_pretrained(model_dir)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not torch.equal(before.lm_head.weight, after.lm_head.weight)
    for key in ("entropy", "mean_token_accuracy", "weight/mean", "weight/min", "weight/max"):
        assert len(logged(summary, key)) == 12
    if options["loss"].startswith("idft"):
        assert logged(summary, "idft/lambda") == [1.0] * 12 and logged(summary, "idft/gamma_mean")
    if options["loss"] == "iwsft" and options.get("iw_level", "sequence") == "sequence":
        assert logged(summary, "iwsft/sequence_weight_mean")[0] == pytest.approx(1.0)  # step 0: SFT
    if options["loss"].startswith("asft"):  # the anchor is 0 at step 0 (the model is its reference), grows after
        anchor = logged(summary, "asft/kl_mean" if options["loss"] == "asft" else "asft/k3_mean")
        assert len(anchor) == 12 and anchor[0] == pytest.approx(0.0, abs=1e-6) and anchor[-1] > 1e-4


class RecordGradients(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["sft", "dft", "idft", "iwsft", "iwsft_token", "sftq", "sftq_sample", "eaft",
                                  "asft", "asft_token"])
def test_gradient_accumulation_does_not_change_the_gradient(model_dir, data_path, tmp_path, name):
    options = {"loss": name, **METHODS.get(name, {})}
    grads = []
    for batch, accumulation in ((4, 1), (2, 2)):
        record = RecordGradients()
        run_train(config(model_dir, data_path, tmp_path / f"{batch}", **options, limit=4, max_steps=1,
                         per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                         max_grad_norm=1e9), callbacks=[record])
        grads.append(record.grads)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7)


def test_idft_at_gamma_1_equals_trls_dft_and_sft_equals_trls_nll(model_dir, data_path, tmp_path):
    ours = {}
    for name, options in {"dft": {"loss": "idft", "idft_gamma_min": 1.0, "idft_gamma_max": 1.0},
                          "nll": {"loss": "sft"}}.items():
        summary = run_train(config(model_dir, data_path, tmp_path / name, limit=4, max_steps=1, **options))
        ours[name] = logged(summary, "loss")[0]
    for loss_type in ("dft", "nll"):
        model, tokenizer = load_model(str(model_dir), device="cpu")
        args = SFTConfig(output_dir=str(tmp_path / f"trl-{loss_type}"), loss_type=loss_type, max_steps=1,
                         per_device_train_batch_size=4, logging_steps=1, learning_rate=3e-3, seed=0,
                         report_to=[], use_cpu=True, bf16=False, disable_tqdm=True, save_strategy="no")
        records = [to_trl_record([{"role": "user", "content": r["question"]}],
                                 [{"role": "assistant", "content": r["solution"]}], tokenizer) for r in ROWS[:4]]
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                             processing_class=tokenizer)
        trainer.train()
        trl_loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][0]
        assert ours[loss_type] == pytest.approx(trl_loss, rel=1e-5), (loss_type, ours[loss_type], trl_loss)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt  # as if the job were killed


def test_killed_run_resumes_to_the_same_curve_and_the_lambda_schedule_continues(model_dir, data_path, tmp_path):
    options = dict(loss="idft", idft_warmup_ratio=0.25, idft_transition_ratio=0.5, max_steps=8, save_steps=2,
                   per_device_train_batch_size=2)
    whole = run_train(config(model_dir, data_path, tmp_path / "whole", **options))
    with pytest.raises(KeyboardInterrupt):
        run_train(config(model_dir, data_path, tmp_path / "killed", **options), callbacks=[StopAt(5)])
    killed_time = json.loads((tmp_path / "killed" / "checkpoint-4" / CHECKPOINT_FILE).read_text())["train_seconds"]
    resumed = run_train(config(model_dir, data_path, tmp_path / "killed", resume=True, **options))
    # the killed run's time up to its last checkpoint is counted (the steps after it are redone)
    assert killed_time > 0 and resumed["train_seconds"] == pytest.approx(
        killed_time + resumed["train_seconds_this_run"], abs=0.01)
    assert logged(whole, "idft/lambda") == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert logged(resumed, "idft/lambda") == logged(whole, "idft/lambda")
    assert logged(resumed, "loss") == pytest.approx(logged(whole, "loss"), rel=1e-5)
    assert logged(resumed, "nll") == pytest.approx(logged(whole, "nll"), rel=1e-5)
    # TRL restarts its token count at 0 on resume; the checkpoint carries it, so the budget the lab reads is whole
    assert resumed["train_tokens"] == whole["train_tokens"] > 0
    assert logged(resumed, "num_tokens") == logged(whole, "num_tokens")
    assert resumed["resumed_from"] == str(tmp_path / "killed" / "checkpoint-4")


def test_resume_refuses_a_directory_of_another_run(model_dir, data_path, tmp_path):
    out = tmp_path / "o"
    run_train(config(model_dir, data_path, out, loss="sft", max_steps=2, save_steps=1))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:5]))
    with pytest.raises(OpsftError, match=r"holds a training run with other settings or data \(data: .*inputs_sha256: "
                                         r".*loss: 'sft' -> 'dft'.*\); it is not resumed"):
        run_train(config(model_dir, str(other), out, loss="dft", max_steps=2, resume=True))
    with pytest.raises(OpsftError, match=r"other settings or data \(max_steps: 2 -> 6\)"):
        run_train(config(model_dir, data_path, out, loss="sft", max_steps=6, resume=True))
    # a fresh run is refused too: it would leave the earlier run's checkpoints beside its own
    with pytest.raises(OpsftError, match=r"holds an earlier training run \(checkpoint-1, checkpoint-2, final, "
                                         r"train_summary.json, .*opsft_run.json\); pass --resume to continue it, "
                                         r"--overwrite to discard it"):
        run_train(config(model_dir, data_path, out, loss="dft", max_steps=1))
    # --overwrite discards the whole earlier run, so no stale checkpoint is left for a later --resume
    summary = run_train(config(model_dir, data_path, out, loss="dft", max_steps=1, save_steps=1, overwrite=True))
    assert summary["method"] == "dft" and summary["steps"] == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    # --resume on a finished run with the same settings has nothing left to do
    again = run_train(config(model_dir, data_path, out, loss="dft", max_steps=1, save_steps=1, resume=True))
    assert again == json.loads((out / "train_summary.json").read_text())


def test_resume_continues_only_from_a_checkpoint_this_run_wrote(model_dir, data_path, tmp_path):
    """Checkpoints that another run left (same step numbers, another run id) or that carry no mark are passed over."""
    import shutil

    options = dict(loss="sft", max_steps=4, save_steps=2, per_device_train_batch_size=2)
    whole = run_train(config(model_dir, data_path, tmp_path / "a", **options))
    with pytest.raises(KeyboardInterrupt):
        run_train(config(model_dir, data_path, tmp_path / "b", **options), callbacks=[StopAt(3)])
    shutil.copytree(tmp_path / "a" / "checkpoint-4", tmp_path / "b" / "checkpoint-4")  # another run's
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-3")
    (tmp_path / "b" / "checkpoint-3" / CHECKPOINT_FILE).unlink()  # no mark
    resumed = run_train(config(model_dir, data_path, tmp_path / "b", resume=True, **options))
    assert resumed["resumed_from"] == str(tmp_path / "b" / "checkpoint-2")
    assert logged(resumed, "loss") == pytest.approx(logged(whole, "loss"), rel=1e-5)
    assert resumed["train_tokens"] == whole["train_tokens"]


def test_checkpoints_not_written_by_opsft_are_not_resumed(model_dir, data_path, tmp_path):
    (tmp_path / "checkpoint-7").mkdir()
    with pytest.raises(OpsftError, match=r"checkpoint-7 were not written by opsft train \(no opsft_run.json\).*"
                                         r"--overwrite discards them"):
        run_train(config(model_dir, data_path, tmp_path, max_steps=1, resume=True))
    assert run_train(config(model_dir, data_path, tmp_path, max_steps=1, overwrite=True))["steps"] == 1
    assert not (tmp_path / "checkpoint-7").exists()


@pytest.mark.parametrize("loss", ["idft", "iwsft", "asft"])
def test_two_processes_give_the_single_process_loss(model_dir, data_path, tmp_path, loss):
    """`accelerate launch` with 2 CPU processes (gloo) on the same global batch as one process. iw-SFT's reference
    pass (precomputed before training) is sharded too: each process logs its share, every process reads all. ASFT's
    anchor (the hidden states recorded inside DDP's forward, the frozen reference's) is the same too."""
    common = ["--model", str(model_dir), "--data", data_path, "--prompt-field", "question", "--completion-field",
              "solution", "--loss", loss, "--max-steps", "2", "--logging-steps", "1", "--learning-rate", "3e-3",
              "--no-progress", "--seed", "0", "--limit", "8"]
    single = run_train(config(model_dir, data_path, tmp_path / "one", loss=loss, max_steps=2, limit=8))
    launch(2, "train", *common, "--per-device-train-batch-size", "2", "--output-dir", str(tmp_path / "two"))
    two = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert logged(two, "loss") == pytest.approx(logged(single, "loss"), rel=1e-4)
    if loss == "iwsft":
        shards = sorted(p.name for p in (tmp_path / "two").glob("reference_logprobs*.jsonl"))
        assert shards == ["reference_logprobs-0-of-2.jsonl", "reference_logprobs-1-of-2.jsonl"]
        weights = logged(single, "iwsft/sequence_weight_mean")
        assert weights and logged(two, "iwsft/sequence_weight_mean") == pytest.approx(weights, rel=1e-4)
    if loss == "asft":
        kl = logged(single, "asft/kl_mean")
        assert kl[-1] > 0 and logged(two, "asft/kl_mean") == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert logged(two, "num_tokens") == logged(single, "num_tokens")


@pytest.mark.parametrize("overrides, error, message", [
    (dict(loss="ppo"), OpsftError, "unknown loss 'ppo'"),
    (dict(loss="idft", idft_gamma_min=3.0), OpsftError, "--idft-gamma-min <= --idft-gamma-max"),
    (dict(loss="iwsft", iw_reference="field"), DataError, "row 1: field 'token_logprob': needs a list of"),
    (dict(loss="sftq", quality_field=None), OpsftError, "--loss sftq needs --quality-field"),
    (dict(loss="asft", iw_reference="precompute"), OpsftError, "--loss asft anchors to the reference's whole"),
    (dict(max_length=8), DataError, "row 1: field 'prompt': is"),
])
def test_bad_configuration_fails_before_training(model_dir, data_path, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        run_train(config(model_dir, data_path, tmp_path, max_steps=1, **overrides))
    assert not (tmp_path / "final").exists()


def test_iwsft_reference_from_a_scored_dataset_equals_the_precomputed_one(model_dir, data_path, tmp_path):
    """`opsft score --save-tokens` writes token_logprob; iw-SFT can read it back as its reference."""
    from opsft.cli import main

    assert main(["score", "--model", str(model_dir), "--data", data_path, "--prompt-field", "question",
                 "--completion-field", "solution", "--save-tokens", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    scored = str(tmp_path / "s" / "scored.jsonl")
    from_field = run_train(config(model_dir, scored, tmp_path / "f", loss="iwsft", iw_reference="field", max_steps=3))
    precomputed = run_train(config(model_dir, data_path, tmp_path / "p", loss="iwsft", max_steps=3))
    assert logged(from_field, "loss") == pytest.approx(logged(precomputed, "loss"), rel=1e-5)


def test_negative_quality_names_the_row(model_dir, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(dict(r, quality=-1.0 if i == 2 else 1.0)) + "\n" for i, r in enumerate(ROWS)))
    with pytest.raises(DataError, match=r"q.jsonl: row 3: field 'quality': must be a number >= 0 \(got -1.0\)"):
        run_train(config(model_dir, str(path), tmp_path / "o", loss="sftq", max_steps=1))


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_smollm2_trains_with_idft(tmp_path, lora):
    summary = run_train(TrainConfig(model="smollm2-135m", data="gym:gsm_symbolic?size=4&seed=0", loss="idft",
                                    lora=lora, max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                                    output_dir=str(tmp_path), progress=False, save_steps=1000))
    for key in ("loss", "nll", "entropy", "mean_token_accuracy", "idft/phi_mean", "idft/gamma_mean", "idft/lambda"):
        assert len(logged(summary, key)) == 2, key
    assert (tmp_path / "final" / ("adapter_config.json" if lora else "config.json")).exists()


def test_gradient_checkpointing_gives_the_same_step(model_dir, data_path, tmp_path):
    plain = run_train(config(model_dir, data_path, tmp_path / "a", loss="idft", max_steps=2))
    checkpointed = run_train(config(model_dir, data_path, tmp_path / "b", loss="idft", max_steps=2,
                                    gradient_checkpointing=True))
    assert logged(checkpointed, "loss") == pytest.approx(logged(plain, "loss"), rel=1e-5)


def test_checkpointing_goes_to_the_option_this_transformers_has(model_dir, data_path, tmp_path):
    """Newer transformers 5.x call it activation_checkpointing (gradient_checkpointing its deprecated alias); 5.17,
    the GPU image's, has only gradient_checkpointing. opsft sets the one the installed version has, and refuses
    either under sft_args (it is opsft's own option)."""

    @dataclasses.dataclass
    class OlderArguments:
        gradient_checkpointing: bool = False

    assert checkpointing_option(OlderArguments) == "gradient_checkpointing"
    on = trl_arguments(config(model_dir, data_path, tmp_path, gradient_checkpointing=True), SFTConfig,
                       default_lr=(1e-4, 1e-5))
    assert getattr(on, checkpointing_option(SFTConfig)) is True
    for key in CHECKPOINTING_OPTIONS:
        with pytest.raises(OpsftError, match="set from opsft's own options"):
            trl_arguments(config(model_dir, data_path, tmp_path, sft_args={key: True}), SFTConfig,
                          default_lr=(1e-4, 1e-5))


def test_train_command_reads_yaml_with_extra_trl_options(model_dir, data_path, tmp_path):
    from opsft.cli import main

    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text(f"model: {model_dir}\ndata: {data_path}\nprompt_field: question\ncompletion_field: solution\n"
                         f"loss: dft\nmax_steps: 2\nlogging_steps: 1\nprogress: false\n"
                         f"sft_args:\n  optim: sgd\n  save_strategy: 'no'\n")
    assert main(["train", "--config", str(yaml_file), "--loss", "idft", "--output-dir", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "train_summary.json").read_text())
    assert summary["config"]["loss"] == "idft" and summary["config"]["sft_args"]["optim"] == "sgd"
    assert not list((tmp_path / "o").glob("checkpoint-*"))  # save_strategy reached TRL
    assert len(logged(summary, "idft/lambda")) == 2


@pytest.mark.parametrize("targets, message", [
    ("q_proj,nope", r"--lora-target-modules: model '.*' has no module named 'nope' \(its linear layers: down_proj, "
                    r"gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj\)"),
    ("layers", r"--lora-target-modules: 'layers' is a ModuleList, not a layer LoRA adapts"),
])
def test_lora_target_modules_are_checked_against_the_model(model_dir, data_path, tmp_path, targets, message):
    with pytest.raises(OpsftError, match=message):
        run_train(config(model_dir, data_path, tmp_path, max_steps=1, lora=True, lora_target_modules=targets))
    assert not (tmp_path / "opsft_run.json").exists()  # refused before the run was recorded


def test_a_refusal_names_the_earlier_run_by_step_order(tmp_path):
    from opsft.runtime.checkpoints import _describe

    paths = [tmp_path / f"checkpoint-{n}" for n in (5, 10, 15, 20, 25)] + [tmp_path / "opsft_run.json"]
    assert _describe(paths) == "checkpoint-5 ... checkpoint-25 (5 checkpoints), opsft_run.json"
    assert _describe(paths[:2]) == "checkpoint-5, checkpoint-10"


@pytest.mark.parametrize("rows, batch", [(3, 4), (6, 4), (8, 4)])
def test_the_budget_plan_trains_on_the_budget_however_the_rows_fill_the_batches(model_dir, data_path, tmp_path, rows,
                                                                                batch):
    """budget_steps plans from the tokens a step sees (all the rows when they are fewer than a batch, a partial last
    batch each epoch otherwise), so TRL's own count of the tokens trained is the budget: 6 epochs' worth here,
    exactly. The plan that assumed full batches trained 4 epochs of 3 rows, and 4.5 epochs of 6."""
    from opsft.engine.train_config import budget_steps
    from opsft.inputs.data import load_examples
    from opsft.inputs.rendering import tokenize_dataset

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = load_examples(data_path, prompt_field="question", completion_field="solution", limit=rows).examples
    lengths = [len(t.input_ids) for t in tokenize_dataset(examples, tokenizer)[0]]
    steps = budget_steps(6 * sum(lengths), rows, batch, sum(lengths) / rows)
    summary = run_train(config(model_dir, data_path, tmp_path, loss="sft", limit=rows, max_steps=steps,
                               per_device_train_batch_size=batch))
    assert summary["train_tokens"] == 6 * sum(lengths)
