"""KL(p_ref || p_theta) over the whole vocabulary at each position, from the two models' last hidden states and LM
heads, tiled over the vocabulary: ASFT's anchor (arXiv 2509.23753; methods/losses.py).

    KL_t = sum_v p_ref,t(v) * (log p_ref,t(v) - log p_theta,t(v)),    z = h W^T + b,    p = softmax(z)
         = sum_v p_ref,t(v) * (z_ref,t(v) - z_theta,t(v)) - logsumexp(z_ref,t) + logsumexp(z_theta,t)

    dKL_t / dz_theta,t(v) = p_theta,t(v) - p_ref,t(v)        (the reference carries no gradient)

Neither model's [N, V] logits are held: the forward folds vocabulary tiles of both into online sums (running
maximum, sum of exp, and the p_ref-weighted sum of z_ref - z_theta, rescaled when the maximum moves, as
flash-attention folds its softmax), and keeps only the two logsumexps per position. The backward projects each
tile again. Memory is O(N * tile) on top of the inputs; every tile is computed in fp32 (or the inputs' dtype where
wider).
"""

from __future__ import annotations

import torch

DEFAULT_TILE = 8192  # vocabulary entries per tile


def _tile_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int, stop: int
                 ) -> torch.Tensor:
    """z[:, start:stop] = hidden @ weight[start:stop]^T + bias[start:stop], in hidden's dtype (fp32 or wider)."""
    logits = hidden @ weight[start:stop].to(hidden.dtype).T
    return logits if bias is None else logits + bias[start:stop].to(hidden.dtype)


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


class _VocabKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, tile):
        h, h_ref = hidden.to(_compute_dtype(hidden)), ref_hidden.to(_compute_dtype(hidden))
        n, vocab = h.shape[0], weight.shape[0]
        neg_inf = h.new_full((n,), float("-inf"))
        max_ref, sum_ref, weighted = neg_inf.clone(), h.new_zeros(n), h.new_zeros(n)  # online sums over z_ref
        max_pol, sum_pol = neg_inf.clone(), h.new_zeros(n)  # online logsumexp of z_theta
        for start in range(0, vocab, tile):
            stop = min(start + tile, vocab)
            z = _tile_logits(h, weight, bias, start, stop)
            z_ref = _tile_logits(h_ref, ref_weight, ref_bias, start, stop)
            new_max = torch.maximum(max_ref, z_ref.max(-1).values)
            scale = torch.exp(max_ref - new_max)
            e = torch.exp(z_ref - new_max[:, None])
            sum_ref = sum_ref * scale + e.sum(-1)
            weighted = weighted * scale + (e * (z_ref - z)).sum(-1)
            max_ref = new_max
            new_max = torch.maximum(max_pol, z.max(-1).values)
            sum_pol = sum_pol * torch.exp(max_pol - new_max) + torch.exp(z - new_max[:, None]).sum(-1)
            max_pol = new_max
        lse_ref, lse_pol = max_ref + sum_ref.log(), max_pol + sum_pol.log()
        kl = weighted / sum_ref - lse_ref + lse_pol
        ctx.save_for_backward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, lse_pol, lse_ref)
        ctx.tile = tile
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        hidden, weight, bias, ref_hidden, ref_weight, ref_bias, lse_pol, lse_ref = ctx.saved_tensors
        dtype = _compute_dtype(hidden)
        h, h_ref, g = hidden.to(dtype), ref_hidden.to(dtype), grad_kl.to(dtype)[:, None]
        grad_hidden = torch.zeros_like(h) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=dtype) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=dtype) if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, weight.shape[0], ctx.tile):
            stop = min(start + ctx.tile, weight.shape[0])
            p = torch.exp(_tile_logits(h, weight, bias, start, stop) - lse_pol[:, None])
            p_ref = torch.exp(_tile_logits(h_ref, ref_weight, ref_bias, start, stop) - lse_ref[:, None])
            grad_logits = g * (p - p_ref)
            if grad_hidden is not None:
                grad_hidden += grad_logits @ weight[start:stop].to(dtype)
            if grad_weight is not None:
                grad_weight[start:stop] = grad_logits.T @ h
            if grad_bias is not None:
                grad_bias[start:stop] = grad_logits.sum(0)
        cast = (lambda grad, like: None if grad is None else grad.to(like.dtype))
        return (cast(grad_hidden, hidden), cast(grad_weight, weight), cast(grad_bias, bias), None, None, None, None)


def vocab_kl(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ref_hidden: torch.Tensor,
             ref_weight: torch.Tensor, ref_bias: torch.Tensor | None = None, *, tile: int = DEFAULT_TILE
             ) -> torch.Tensor:
    """KL(p_ref,t || p_theta,t) per position [N], from the policy's hidden states [N, d] and LM head (weight [V, d],
    bias [V] or None), and the reference's (no gradient flows to them). Differentiable in hidden, weight and bias;
    returned in fp32 (or the inputs' dtype where wider)."""
    if hidden.shape[0] != ref_hidden.shape[0] or weight.shape[0] != ref_weight.shape[0]:
        raise ValueError(f"vocab_kl: the policy and the reference differ in positions or vocabulary "
                         f"({tuple(hidden.shape)} x {tuple(weight.shape)} against {tuple(ref_hidden.shape)} x "
                         f"{tuple(ref_weight.shape)})")
    return _VocabKL.apply(hidden, weight, bias, ref_hidden.detach(), ref_weight.detach(),
                          None if ref_bias is None else ref_bias.detach(), tile)
