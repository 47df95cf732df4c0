"""opsft.SFTConfig and opsft.SFTTrainer: TRL's, with `loss_type` switching to any loss of the family. TRL
tokenizes every dataset shape it takes; the per-step losses equal `opsft train`'s on the same data and seed."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from opsft.commands.train import TrainConfig, run_train
from opsft.engine.sft_config import LOSS_HYPERPARAMETERS, SFTConfig
from opsft.engine.sft_trainer import SFTTrainer
from opsft.engine.trl_setup import checkpointing_option
from opsft.methods.losses import METHODS, LossConfig

PAIRS = [(f"What is {a} + {b}?", f"{a} + {b} = {a + b}. #### {a + b}", q)
         for (a, b), q in zip([(1, 2), (17, 25), (3, 4), (10, 32), (5, 5), (6, 7)], [1.0, 0.5, 2.0, 1.0, 0.0, 1.5])]
CONVERSATIONAL = [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}],
                   "quality": w} for q, a, w in PAIRS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-api")
    make_model(len(tokenizer), init=0.02).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def api_config(out, **options) -> SFTConfig:
    """The TRL settings `opsft train` uses (engine/trl_setup.py) on a CPU, for 3 steps of 2 examples."""
    return SFTConfig(output_dir=str(out), report_to="none", use_cpu=True, bf16=False, seed=0, learning_rate=3e-3,
                     max_steps=3, per_device_train_batch_size=2, logging_steps=1, save_steps=1000, max_length=1024,
                     lr_scheduler_type="linear", warmup_steps=0.0, weight_decay=0.0, max_grad_norm=1.0,
                     disable_tqdm=True, **{checkpointing_option(SFTConfig): False}, **options)


def losses(history) -> list[float]:
    return [h["loss"] for h in history if "loss" in h]


def test_the_config_takes_every_loss_with_the_commands_hyperparameters(tmp_path):
    for field in LOSS_HYPERPARAMETERS:  # the same names and defaults as `opsft train`'s flags
        assert getattr(api_config(tmp_path), field) == getattr(LossConfig(), field)
    for loss_type in ("nll", *METHODS):
        assert api_config(tmp_path, loss_type=loss_type).loss_config().loss == ("sft" if loss_type == "nll"
                                                                                  else loss_type)
    assert api_config(tmp_path, loss_type="idft", idft_beta=2.0).loss_config().idft_beta == 2.0
    with pytest.raises(ValueError, match="loss_type 'idtf': choose one of nll, sft, dft, idft"):
        api_config(tmp_path, loss_type="idtf")
    with pytest.raises(Exception, match="idft-gamma-min <= --idft-gamma-max"):
        api_config(tmp_path, loss_type="idft", idft_gamma_min=3.0)


def test_idft_on_a_conversational_dataset(model_dir, tmp_path):
    """TRL tokenizes the messages (the prompt masked); the family's loss trains and logs its statistics."""
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "completion")} for r in CONVERSATIONAL])
    trainer = SFTTrainer(model=str(model_dir), args=api_config(tmp_path, loss_type="idft"), train_dataset=dataset)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert len(losses(trainer.state.log_history)) == 3
    assert all("idft/phi_mean" in h for h in trainer.state.log_history if "loss" in h)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize("loss, metric, at_start", [("iwsft", "iwsft/sequence_weight_mean", 1.0),
                                                     ("asft", "asft/kl_mean", 0.0)])
def test_under_lora_the_reference_is_the_model_with_its_adapter_off(model_dir, tmp_path, loss, metric, at_start):
    """iw-SFT's weights and ASFT's full-vocabulary anchor from the same model with its adapter off: at step 1 the
    model is its own reference (weight 1, KL 0), then they move."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=str(model_dir), args=api_config(tmp_path, loss_type=loss),
                         train_dataset=Dataset.from_list(CONVERSATIONAL), peft_config=lora)
    assert trainer.ref_model == "adapter-off"
    trainer.train()
    values = [h[metric] for h in trainer.state.log_history if "loss" in h]
    assert len(values) == 3 and values[0] == pytest.approx(at_start, abs=1e-7)
    assert abs(values[-1] - at_start) > 1e-6


@pytest.mark.parametrize("shape", ["text", "prompt/completion text"])
def test_every_dataset_shape_trl_takes(model_dir, tmp_path, shape):
    rows = ([{"text": f"{q} {a}"} for q, a, _ in PAIRS] if shape == "text" else
            [{"prompt": q, "completion": " " + a} for q, a, _ in PAIRS])
    trainer = SFTTrainer(model=str(model_dir), args=api_config(tmp_path, loss_type="eaft"),
                         train_dataset=Dataset.from_list(rows))
    trainer.train()
    assert len(losses(trainer.state.log_history)) == 3


def test_refusals(model_dir, tmp_path):
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "completion")} for r in CONVERSATIONAL])
    with pytest.raises(ValueError, match="reads each example's quality from column 'quality', which the dataset"):
        SFTTrainer(model=str(model_dir), args=api_config(tmp_path, loss_type="sftq"), train_dataset=dataset)
    with pytest.raises(ValueError, match="packing and padding_free are not supported"):
        SFTTrainer(model=str(model_dir), args=api_config(tmp_path, loss_type="idft", packing=True),
                   train_dataset=dataset)
    from trl import SFTConfig as TRLConfig
    with pytest.raises(TypeError, match="takes an opsft.SFTConfig"):
        SFTTrainer(model=str(model_dir), args=TRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False),
                   train_dataset=dataset)


CLI_CASES = {loss: {} for loss in METHODS} | {"sftq_sample": {"loss": "sftq", "quality_mode": "sample"},
                                              "iwsft_token": {"loss": "iwsft", "iw_level": "token"},
                                              "quality_column": {"loss": "sftq"}}


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_api_gives_opsft_trains_losses_step_for_step(model_dir, tmp_path, case):
    """The same rows as a JSONL file for `opsft train` (its tokenizer, its precomputed iw-SFT/ASFT reference) and as
    a datasets.Dataset for the API (TRL's tokenizer, the trainer's frozen reference): the same loss at every step,
    to float round-off."""
    options = {"loss": case, **CLI_CASES[case]}
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in CONVERSATIONAL))
    cli = run_train(TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "cli"),
                                quality_field="quality", per_device_train_batch_size=2, logging_steps=1, max_steps=3,
                                learning_rate=3e-3, seed=0, progress=False, save_steps=1000, **options))
    loss = options.pop("loss")
    rows = CONVERSATIONAL
    if case == "quality_column":  # SFT(Q)'s scores under another name
        rows = [{**{k: v for k, v in r.items() if k != "quality"}, "score": r["quality"]} for r in rows]
        options["quality_column"] = "score"
    trainer = SFTTrainer(model=str(model_dir), args=api_config(tmp_path / "api", loss_type=loss, **options),
                         train_dataset=Dataset.from_list(rows))
    trainer.train()
    assert len(losses(cli["log_history"])) == 3
    assert losses(trainer.state.log_history) == pytest.approx(losses(cli["log_history"]), rel=1e-5, abs=1e-7)


def test_asft_refuses_a_scaled_head_and_an_adapter_off_reference_without_an_adapter(model_dir, tmp_path):
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "completion")} for r in CONVERSATIONAL])
    with pytest.raises(ValueError, match='ref_model="adapter-off" needs a model with a PEFT adapter'):
        SFTTrainer(model=str(model_dir), args=api_config(tmp_path, loss_type="asft"), train_dataset=dataset,
                   ref_model="adapter-off")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match=r"scales or caps its logits \(final_logit_softcapping\)"):
        SFTTrainer(model=model, args=api_config(tmp_path, loss_type="asft"), train_dataset=dataset)
