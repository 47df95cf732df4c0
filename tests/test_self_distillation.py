"""`opsft train --loss sdft` (engine/self_distillation.py) on the tiny model: what opsft relies on in TRL's
experimental SDFTTrainer, the privileged context reaching the teacher, the tokens counted, LoRA, the run guard and
resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, make_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from opsft.commands.train import TrainConfig, run_train
from opsft.inputs.rendering import prompt_ids
from opsft.runtime.errors import DataError, OpsftError

ROWS = [{"question": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}. SOLUTION-{i} #### {a + b}"}
        for i, (a, b) in enumerate([(1, 2), (17, 25), (3, 4), (10, 32), (5, 5), (6, 7)])]


@pytest.fixture(scope="module", params=["chat", "plain"])
def model_dir(request, tmp_path_factory):
    """The tiny model, with a chat template (message prompts through it) or without (opsft's plain format)."""
    tokenizer = make_tokenizer(**({} if request.param == "chat" else {"chat_template": None}))
    path = tmp_path_factory.mktemp(f"tiny-sdft-{request.param}")
    make_model(len(tokenizer), init=0.02).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdft-data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


def config(model_dir, data_path, out, **overrides):
    base = dict(model=str(model_dir), data=data_path, output_dir=str(out), prompt_field="question",
                completion_field="solution", loss="sdft", per_device_train_batch_size=2, max_steps=2,
                logging_steps=1, learning_rate=3e-3, seed=0, progress=False, save_steps=1000, sdft_max_new_tokens=6)
    return TrainConfig(**{**base, **overrides})


class Batches(TrainerCallback):
    """What TRL's SDFTTrainer hands its callbacks for each batch it builds: the student's prompts, its samples
    and the teacher's inputs."""

    def __init__(self):
        self.batches = []

    def on_self_distillation_batch_prepared(self, **batch):
        self.batches.append({k: batch[k] for k in ("prompt_ids", "completion_ids", "teacher_input_ids",
                                                   "teacher_attention_mask")})


def test_a_training_step_reaches_the_teacher_with_the_privileged_context_and_counts_the_tokens(model_dir, data_path,
                                                                                                tmp_path):
    batches = Batches()
    summary = run_train(config(model_dir, data_path, tmp_path), callbacks=[batches])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert summary["steps"] == 2 and len(batches.batches) == 2
    assert summary["sdft"]["teacher_model_kind"] == "base" and summary["sdft"]["distillation_mode"] == "topk_logits"
    assert summary["sdft"]["num_generations"] == 1 and summary["sdft"]["max_completion_length"] == 6
    prompt_tokens = 0
    for batch in batches.batches:
        for prompt, teacher, mask in zip(batch["prompt_ids"], batch["teacher_input_ids"],
                                         batch["teacher_attention_mask"]):
            student_text = tokenizer.decode(prompt, skip_special_tokens=True)
            teacher_text = tokenizer.decode(teacher[mask.bool()], skip_special_tokens=True)
            row = next(r for r in ROWS if r["question"] in student_text)
            assert "SOLUTION" not in student_text
            assert row["question"] in teacher_text and row["solution"] in teacher_text  # the privileged context
            prompt_tokens += len(prompt_ids([{"role": "user", "content": row["question"]}], tokenizer))
        # the teacher reads the student's own sample after its prompt: the same completion ids
        width = batch["completion_ids"].shape[1]
        assert torch.equal(batch["teacher_input_ids"][:, -width:], batch["completion_ids"])
    lengths = [h["completions/mean_length"] for h in summary["log_history"] if "completions/mean_length" in h]
    assert summary["train_tokens"] == prompt_tokens + round(sum(lengths) * 2)  # prompt + sample, 2 rows a step
    before = AutoModelForCausalLM.from_pretrained(model_dir)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not torch.equal(before.lm_head.weight, after.lm_head.weight)


class StopAt(TrainerCallback):
    """A kill during training, after `step` optimizer steps (and their checkpoints)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_killed_run_resumes_to_the_same_losses_and_tokens(model_dir, data_path, tmp_path):
    """Checkpoints every step; the run cut during step 2 (before its checkpoint) resumes from checkpoint-1 (the
    trainer's RNG with it, so the same samples) to the uninterrupted run's losses and token count."""
    options = dict(max_steps=3, save_steps=1)
    whole = run_train(config(model_dir, data_path, tmp_path / "a", **options))
    with pytest.raises(KeyboardInterrupt):
        run_train(config(model_dir, data_path, tmp_path / "b", **options), callbacks=[StopAt(2)])
    resumed = run_train(config(model_dir, data_path, tmp_path / "b", resume=True, **options))
    assert resumed["resumed_from"] == str(tmp_path / "b" / "checkpoint-1")
    losses = [[h["loss"] for h in s["log_history"] if "loss" in h] for s in (whole, resumed)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # the history resumes with the checkpoint
    assert resumed["train_tokens"] == whole["train_tokens"] and resumed["steps"] == 3
    with pytest.raises(OpsftError, match="holds a training run with other settings"):
        run_train(config(model_dir, data_path, tmp_path / "b", resume=True, max_steps=3, save_steps=1,
                         sdft_max_new_tokens=7))


def test_under_lora_the_teacher_is_the_model_with_its_adapter_off(model_dir, data_path, tmp_path):
    summary = run_train(config(model_dir, data_path, tmp_path, lora=True, learning_rate=3e-2))
    assert summary["steps"] == 2 and summary["sdft"]["teacher_model_kind"] == "base"
    assert (tmp_path / "final" / "adapter_config.json").is_file()  # the adapter, as the family's LoRA runs save it
    losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)


def test_a_prompt_that_leaves_no_room_for_the_sample_is_a_row_error_or_a_counted_skip(model_dir, data_path, tmp_path):
    with pytest.raises(DataError, match="row 1"):
        run_train(config(model_dir, data_path, tmp_path / "a", max_length=4))
    with pytest.raises(OpsftError, match=r"no prompt left to train on \(6 skipped"):
        run_train(config(model_dir, data_path, tmp_path / "b", max_length=4, skip_invalid=True))
