"""The tiled full-vocabulary KL(p_ref || p_theta) against a float64 full softmax: value, gradients, and what it
keeps for the backward (never an [N, V] tensor)."""

from __future__ import annotations

import pytest
import torch

from opsft.methods.vocab_kl import vocab_kl

N, D, V = 9, 6, 37


def inputs(seed=0, dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    policy = [randn(N, D), randn(V, D, scale=2.0), randn(V) if bias else None]
    reference = [randn(N, D), randn(V, D, scale=2.0), randn(V) if bias else None]
    return policy, reference


def full_softmax_kl(hidden, weight, bias, ref_hidden, ref_weight, ref_bias):
    """sum_v p_ref(v) (log p_ref(v) - log p_theta(v)), one position at a time, the logits in full."""
    rows = []
    for t in range(hidden.shape[0]):
        z = hidden[t].double() @ weight.double().T + (0 if bias is None else bias.double())
        z_ref = ref_hidden[t].double() @ ref_weight.double().T + (0 if ref_bias is None else ref_bias.double())
        rows.append((torch.softmax(z_ref, -1) * (torch.log_softmax(z_ref, -1) - torch.log_softmax(z, -1))).sum())
    return torch.stack(rows)


@pytest.mark.parametrize("tile", [1, 5, V, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_value_and_gradients_equal_the_float64_full_softmax(tile, bias):
    (h, w, b), reference = inputs(bias=bias)
    upstream = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = [x.clone().requires_grad_() for x in (h, w, b) if x is not None]
    tiled = vocab_kl(*params, *([] if bias else [None]), *reference, tile=tile)
    expected_params = [x.clone().requires_grad_() for x in (h, w, b) if x is not None]
    expected = full_softmax_kl(*expected_params, *([] if bias else [None]), *reference)
    torch.testing.assert_close(tiled, expected, atol=1e-12, rtol=1e-10)
    grads = torch.autograd.grad((tiled * upstream).sum(), params)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), expected_params)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    assert (tiled >= -1e-12).all()


def test_its_gradient_on_every_logit_is_p_theta_minus_p_ref():
    """With W = I and b = 0 the hidden states are the logits: dKL_t/dz_t(v) = p_theta,t(v) - p_ref,t(v)."""
    logits = torch.randn(N, V, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    ref_logits = torch.randn(N, V, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    eye = torch.eye(V, dtype=torch.float64)
    (grad,) = torch.autograd.grad(vocab_kl(logits, eye, None, ref_logits, eye, tile=8).sum(), logits)
    torch.testing.assert_close(grad, logits.detach().softmax(-1) - ref_logits.softmax(-1), atol=1e-14, rtol=1e-12)


def test_zero_where_the_model_is_its_reference_and_empty_without_positions():
    (h, w, b), _ = inputs()
    same = vocab_kl(h, w, b, h, w, b, tile=4)
    assert same.abs().max().item() < 1e-12
    empty = vocab_kl(h[:0].requires_grad_(), w.requires_grad_(), b, h[:0], w, b, tile=4)
    assert empty.shape == (0,)
    empty.sum().backward()
    assert w.grad is not None and w.grad.abs().max().item() == 0.0


def test_the_backward_keeps_no_tensor_over_the_vocabulary_per_position():
    """What autograd saves: the inputs and two numbers per position (the logsumexps), never N x V (or a tile)."""
    (h, w, b), reference = inputs(dtype=torch.float32)
    h.requires_grad_()
    w.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        vocab_kl(h, w, b, *reference, tile=8).sum().backward()
    assert saved and all(shape in {(N, D), (V, D), (V,), (N,)} for shape in saved), saved


def test_bf16_inputs_are_computed_in_fp32():
    """bf16 hidden states and heads (the GPU path): each tile in fp32, so the value is the fp32 one of the bf16
    numbers; the gradients come back in bf16."""
    (h, w, b), (rh, rw, rb) = inputs(dtype=torch.bfloat16)
    h.requires_grad_()
    kl = vocab_kl(h, w, b, rh, rw, rb, tile=8)
    assert kl.dtype == torch.float32
    torch.testing.assert_close(kl.double(), full_softmax_kl(h.detach(), w, b, rh, rw, rb), atol=1e-5, rtol=1e-5)
    kl.sum().backward()
    assert h.grad.dtype == torch.bfloat16
