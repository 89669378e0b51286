"""Gated matrices that store nothing extra for backward (core: imports torch only).

A reparameterized matrix computes with W̄ = s ⊙ W, s one scalar (WeSaR, σReparam, constants) or
one scalar per row (Weight Normalization). Written as ``F.linear(x, s * W)``, autograd saves the
freshly formed s·W for the backward: a second copy of every weight (under FSDP, of every layer's
gathered weights at once) that lives from the matrix's forward to its backward. It is not needed:

    forward    y  = x W̄ᵀ                     (W̄ = s ⊙ W formed in the activation dtype, not saved)
    backward   G  = gyᵀ x                    (the ordinary weight gradient of y = x W̄ᵀ)
               ∂x = gy W̄                     (W̄ formed again, transiently)
               ∂W = s ⊙ G
               ∂s = Σ_cols G ⊙ W             (per row; summed over rows too for a scalar s)

so only x and W are saved, as a plain linear saves them (W by reference: it is the parameter),
plus s, which is O(rows). An embedding is the same with a gather instead of a product: y = s_i ·
W[i]; ∂W[i] += s_i · gy, ∂s_i += ⟨gy, W[i]⟩, and only the indices (plus W and s by reference)
are saved, where ``s * F.embedding(i, W)`` would save the gathered rows, an activation-sized
tensor. The forward computes exactly what the unfused expressions compute, in the same dtypes;
``s`` itself may be a function of W (Weight Normalization's g/‖w‖, σReparam's γ/σ): autograd
carries ∂s on through that function as before.

A fixed constant (Residual Scaling's 1/√(2N), the plain embedding's scale) is passed as a Python
float instead of a tensor: it then multiplies in the op's own arithmetic, ``weight.to(dt) * c``,
never rounded to the activation dtype first, and has no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gain_grad(g_weight: torch.Tensor, weight: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """∂s from the weight gradient of W̄ (G) and W: a row sum, or the full sum for a scalar s; fp32."""
    rows = torch.sum(g_weight.float() * weight.float(), dim=1, keepdim=True)
    return (rows.sum().reshape(1) if gain.numel() == 1 else rows).to(gain.dtype)


def _scale(t: torch.Tensor, gain: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    """``gain ⊙ t`` in ``dtype``: a tensor gain is cast to ``dtype`` first, a float constant is not."""
    t = t.to(dtype)
    return t * gain if isinstance(gain, float) else gain.to(dtype) * t


class _ScaledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, gain: torch.Tensor | float) -> torch.Tensor:
        if isinstance(gain, float):
            ctx.save_for_backward(x, weight)
            ctx.constant = gain
        else:
            ctx.save_for_backward(x, weight, gain)
            ctx.constant = None
        return F.linear(x, _scale(weight, gain, x.dtype))

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, weight, *tensor_gain = ctx.saved_tensors
        gain = ctx.constant if ctx.constant is not None else tensor_gain[0]
        dt = gy.dtype
        g_x = g_w = g_s = None
        if ctx.needs_input_grad[0]:
            g_x = gy @ _scale(weight, gain, dt)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            G = gy.reshape(-1, gy.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(dt)
            if ctx.needs_input_grad[1]:
                g_w = _scale(G, gain, dt).to(weight.dtype)
            if ctx.needs_input_grad[2]:
                g_s = _gain_grad(G, weight, gain)
        return g_x, g_w, g_s


def _row_gains(gain: torch.Tensor | float, idx: torch.Tensor) -> torch.Tensor | float:
    """The gain of each looked-up row: the scalar (or constant) itself, or the rows' own gains."""
    return gain if isinstance(gain, float) or gain.numel() == 1 else F.embedding(idx, gain)


class _ScaledEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx: torch.Tensor, weight: torch.Tensor, gain: torch.Tensor | float) -> torch.Tensor:
        if isinstance(gain, float):
            ctx.save_for_backward(idx, weight)
            ctx.constant = gain
        else:
            ctx.save_for_backward(idx, weight, gain)
            ctx.constant = None
        rows = F.embedding(idx, weight)
        return _scale(rows, _row_gains(gain, idx), rows.dtype)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        idx, weight, *tensor_gain = ctx.saved_tensors
        gain = ctx.constant if ctx.constant is not None else tensor_gain[0]
        flat_idx, flat_gy = idx.reshape(-1), gy.reshape(-1, gy.shape[-1])
        g_w = g_s = None
        if ctx.needs_input_grad[1]:
            scaled = _scale(flat_gy, _row_gains(gain, flat_idx), gy.dtype)
            g_w = torch.zeros_like(weight).index_add_(0, flat_idx, scaled.to(weight.dtype))
        if ctx.needs_input_grad[2]:
            # ⟨gy, W[i]⟩ per looked-up row, the rows gathered again (transiently), accumulated per token id.
            dots = torch.sum(flat_gy.float() * F.embedding(flat_idx, weight).float(), dim=1, keepdim=True)
            g_s = (dots.sum().reshape(1) if gain.numel() == 1
                   else torch.zeros(gain.shape, dtype=torch.float32, device=gain.device).index_add_(0, flat_idx, dots))
            g_s = g_s.to(gain.dtype)
        return None, g_w, g_s


def scaled_linear(x: torch.Tensor, weight: torch.Tensor, gain: torch.Tensor | float) -> torch.Tensor:
    """``F.linear(x, gain ⊙ weight)`` in ``x``'s dtype; saves x, weight and gain only."""
    return _ScaledLinear.apply(x, weight, gain)


def scaled_embedding(idx: torch.Tensor, weight: torch.Tensor, gain: torch.Tensor | float) -> torch.Tensor:
    """``gain[idx] ⊙ weight[idx]`` (or ``gain ⊙ weight[idx]`` for a scalar gain); saves idx, weight, gain."""
    return _ScaledEmbedding.apply(idx, weight, gain)
