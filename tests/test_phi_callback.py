"""opsft.PhiCallback and the phi/... keys: how on-policy the training data are, each logging step, against a direct
float64 computation (full softmax, one example at a time)."""

from __future__ import annotations

import pytest
import torch
import trl
from conftest import make_model
from datasets import Dataset

from opsft import PhiCallback, SFTConfig, SFTTrainer
from opsft.engine.trl_setup import checkpointing_option
from opsft.methods.ddt import phi_metrics

ROWS = [{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
         "completion": [{"role": "assistant", "content": f"{a + b}" if a % 2 else f"{a} + {b} = {a + b}."}]}
        for a, b in [(1, 2), (17, 25), (3, 4), (10, 32), (5, 5), (6, 7)]]


def reference(model, rows) -> tuple[float, float]:
    """(mean phi over every completion token, share of examples with phi_mean >= -0.05): float64, full softmax,
    one example at a time, from TRL's tokenized rows (labels -100 off the completion)."""
    phis, on_policy = [], []
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor(row["labels"])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].double()
        log_p = torch.log_softmax(logits, -1)
        targets, scored = labels[1:], labels[1:] != -100
        phi = (log_p[torch.arange(len(targets)), targets.clamp(min=0)] - (log_p.exp() * log_p).sum(-1))[scored]
        phis.append(phi)
        on_policy.append(float(phi.mean() >= -0.05))
    return torch.cat(phis).mean().item(), sum(on_policy) / len(on_policy)


def settings(out, **options):
    return dict(output_dir=str(out), report_to="none", use_cpu=True, bf16=False, max_steps=1, learning_rate=0.0,
                logging_steps=1, per_device_train_batch_size=len(ROWS), disable_tqdm=True,
                **{checkpointing_option(trl.SFTConfig): False}, **options)


@pytest.fixture
def model(tokenizer):
    return make_model(len(tokenizer), init=0.03)  # broad: its phi_mean per row falls either side of -0.05


def test_opsft_trainer_logs_phi_of_its_training_batches(model, tokenizer, tmp_path):
    """One step over the whole dataset at learning rate 0: the logged phi/mean and phi/on_policy_share are the
    batch's, as a direct computation gives them."""
    trainer = SFTTrainer(model=model, args=SFTConfig(**settings(tmp_path, loss_type="sft")),
                         processing_class=tokenizer, train_dataset=Dataset.from_list(ROWS))
    trainer.train()
    logged = trainer.state.log_history[0]
    mean, share = reference(model, trainer.train_dataset)
    assert 0 < share < 1  # the rows are a mix: the test can tell a share from 0 or 1
    assert logged["phi/mean"] == pytest.approx(mean, abs=1e-5)
    assert logged["phi/on_policy_share"] == pytest.approx(share)


@pytest.mark.parametrize("logits_memory_mb", [None, 0], ids=["logits", "fused head"])
def test_on_a_plain_trl_trainer_it_scores_a_probe_batch(model, tokenizer, tmp_path, logits_memory_mb):
    trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**settings(tmp_path)), processing_class=tokenizer,
                             train_dataset=Dataset.from_list(ROWS))
    trainer.add_callback(PhiCallback(trainer, probe_size=4, logits_memory_mb=logits_memory_mb))
    trainer.train()
    logged = trainer.state.log_history[0]
    mean, share = reference(model, [trainer.train_dataset[i] for i in range(4)])
    assert logged["phi/probe_mean"] == pytest.approx(mean, abs=1e-5)
    assert 0 < share < 1 and logged["phi/probe_on_policy_share"] == pytest.approx(share)


def test_phi_metrics_pool_sums_over_rows_with_no_completion():
    """Sums over a [B, T] batch: an example's phi_mean is its own tokens' mean; a row with no completion token
    counts in neither the tokens nor the examples."""
    log_probs = torch.tensor([[-1.0, -0.5, 0.0], [0.0, 0.0, 0.0], [-0.2, 0.0, 0.0]])
    entropy = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])  # phi_mean -0.1 (off), none, +0.1 (on)
    phi_sum, tokens, on_policy, examples = phi_metrics(log_probs, entropy, mask)
    assert (phi_sum.item(), tokens.item(), on_policy.item(), examples.item()) == (pytest.approx(-0.1), 3, 1, 2)


def drift_reference(model, samples, prompts) -> float:
    """Mean over samples of phi_mean of the sample under `model`: float64, full softmax, one sample at a time."""
    means = []
    for record in samples:
        prompt = prompts[record["prompt_index"]]
        ids = torch.tensor([prompt + record["tokens"]])
        with torch.no_grad():
            log_p = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1].double(), -1)
        targets = torch.tensor(record["tokens"])
        phi = log_p[torch.arange(len(targets)), targets] - (log_p.exp() * log_p).sum(-1)
        means.append(phi.mean().item())
    return sum(means) / len(means)


@pytest.mark.parametrize("opsft_trainer", [False, True], ids=["trl", "opsft"])
def test_drift_scores_the_starting_models_samples_under_the_current_model(model, tokenizer, tmp_path, opsft_trainer):
    """phi/drift: the model as the callback is made samples the held-out prompts; after each step those samples are
    scored under the trained model (logged value == a float64 computation on the final model)."""
    import copy

    from opsft.engine.drift import sample_base
    from opsft.runtime.resumable import MemoryLog

    start = copy.deepcopy(model)
    held_out = [{"prompt": f"What is {a} + {a}?", "completion": f"{2 * a}"} for a in range(5)]
    trainer_class, config_class = (SFTTrainer, SFTConfig) if opsft_trainer else (trl.SFTTrainer, trl.SFTConfig)
    trainer = trainer_class(model=model, args=config_class(**{**settings(tmp_path), "learning_rate": 0.05}),
                            processing_class=tokenizer, train_dataset=Dataset.from_list(ROWS))
    callback = PhiCallback(trainer, drift_dataset=Dataset.from_list(held_out), drift_max_new_tokens=6, seed=3)
    trainer.add_callback(callback)
    trainer.train()
    logged = trainer.state.log_history[0]
    prompts = callback.drift_prompts
    assert len(prompts) == 5 and all(record["tokens"] for record in callback.drift_samples)
    log = MemoryLog()  # the samples are the starting model's own, as drawn with the callback's seed
    sample_base(start, tokenizer, prompts, samples=1, max_new_tokens=6, seed=3, batch_size=8, log=log)
    assert log.merged() == callback.drift_samples
    assert logged["phi/drift"] == pytest.approx(drift_reference(model, callback.drift_samples, prompts), abs=1e-5)
    assert abs(logged["phi/drift"] - drift_reference(start, callback.drift_samples, prompts)) > 1e-3  # it moved
    assert logged["phi/drift_sem"] > 0
    with pytest.raises(ValueError, match="drift_steps must be >= 1"):
        PhiCallback(trainer, drift_dataset=held_out, drift_steps=0)
