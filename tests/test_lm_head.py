"""The step's per-token statistics two ways (lm_head.py): from the logits, against a float64 reference one
example at a time; and the training step through the logits against the step through TRL's fused head."""

from __future__ import annotations

import pytest
import test_training
import torch
from test_training import METHODS, RecordGradients, config, logged

from opsft.commands.train import run_train
from opsft.engine import lm_head

model_dir, data_path = test_training.model_dir, test_training.data_path  # its fixtures: the tiny model, the rows


def reference(logits_row: torch.Tensor, labels_row: torch.Tensor):
    """One example, float64, full softmax, position by position."""
    out = []
    for t in range(labels_row.numel() - 1):
        y = int(labels_row[t + 1])
        if y == -100:
            continue
        p = torch.softmax(logits_row[t].double(), -1)
        out.append((t, torch.log(p[y]).item(), -(p * torch.log(p)).sum().item(), int(torch.argmax(p)) == y))
    return out


def test_statistics_from_logits_equal_a_float64_reference_per_example():
    torch.manual_seed(0)
    batch, length, vocab = 3, 9, 50
    logits = torch.randn(batch, length, vocab) * 3
    logits[1, 4, 7] = logits[1, 4, 9] = logits[1, 4].max() + 1  # a tie for the argmax: the first index wins
    labels = torch.randint(0, vocab, (batch, length))
    labels[:, :3] = -100  # the prompt
    labels[0, 6:] = -100  # right padding of a shorter example
    labels[1, 5] = 9  # position 4 predicts 9, tied with the earlier 7: not top-1
    stats = lm_head.from_logits(logits, labels)
    assert stats.log_probs.shape == stats.entropy.shape == stats.is_top1.shape == (batch, length - 1)
    assert torch.equal(stats.label_mask, labels[:, 1:] != -100)
    for row in range(batch):
        expected = reference(logits[row], labels[row])
        assert [t for t, *_ in expected] == stats.label_mask[row].nonzero().flatten().tolist()
        for t, log_p, entropy, top1 in expected:
            assert stats.log_probs[row, t].item() == pytest.approx(log_p, abs=1e-5)
            assert stats.entropy[row, t].item() == pytest.approx(entropy, abs=1e-5)
            assert bool(stats.is_top1[row, t]) == top1
    assert not stats.is_top1[1, 4]
    unscored = ~stats.label_mask
    assert stats.log_probs[unscored].eq(0).all() and stats.entropy[unscored].eq(0).all()
    assert not stats.is_top1[unscored].any()


def test_log_prob_gradient_equals_the_float64_one_and_entropy_carries_none():
    torch.manual_seed(1)
    logits = (torch.randn(2, 6, 30) * 2).requires_grad_()
    labels = torch.randint(0, 30, (2, 6))
    labels[0, :2] = -100
    upstream = torch.randn(2, 5)
    stats = lm_head.from_logits(logits, labels)
    assert not stats.entropy.requires_grad
    (stats.log_probs * upstream).sum().backward()
    exact = logits.detach().double().requires_grad_()
    log_p = torch.log_softmax(exact[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    (log_p * (labels[:, 1:] != -100) * upstream.double()).sum().backward()
    torch.testing.assert_close(logits.grad.double(), exact.grad, rtol=1e-5, atol=1e-7)


def test_budget_rule():
    ids = torch.zeros(2, 8, dtype=torch.long)
    assert lm_head.fits(ids, 1000, 2 * 8 * 1000 * 4) and not lm_head.fits(ids, 1000, 2 * 8 * 1000 * 4 - 1)
    assert lm_head.logits_memory_budget(None, torch.device("cpu")) == lm_head.DEFAULT_LOGITS_MEMORY_MB * 2 ** 20
    assert lm_head.logits_memory_budget(None, torch.device("cuda")) == 0
    assert lm_head.logits_memory_budget(3, torch.device("cuda")) == 3 * 2 ** 20


@pytest.mark.parametrize("name", ["sft", "idft", "iwsft_frozen", "asft"])
def test_a_step_through_the_logits_equals_a_step_through_the_fused_head(model_dir, data_path, tmp_path, name):
    """Same losses, logged metrics and gradients; the summary says which way each forward pass went (iw-SFT's
    frozen reference pass included; ASFT's anchor takes the backbone's hidden states either way)."""
    options = {"loss": name, **METHODS[name]}
    runs = {}
    for way, budget in (("logits", None), ("fused", 0)):
        record = RecordGradients()
        summary = run_train(config(model_dir, data_path, tmp_path / way, **options, max_steps=2,
                                   logits_memory_mb=budget), callbacks=[record])
        passes = 2 * (2 if name == "iwsft_frozen" else 1)  # two steps of one micro-batch, plus the reference's
        assert summary["lm_head_calls_this_run"] == {"logits": passes if way == "logits" else 0,
                                                     "fused": passes if way == "fused" else 0}
        runs[way] = summary, record.grads
    (logits, logits_grads), (fused, fused_grads) = runs["logits"], runs["fused"]
    for key in ("loss", "nll", "entropy", "mean_token_accuracy", "weight/mean", "asft/kl_mean"):
        assert logged(logits, key) == pytest.approx(logged(fused, key), rel=1e-5, abs=1e-7), key
    assert logits_grads.keys() == fused_grads.keys()
    for key in logits_grads:
        torch.testing.assert_close(logits_grads[key], fused_grads[key], rtol=1e-4, atol=1e-6)

