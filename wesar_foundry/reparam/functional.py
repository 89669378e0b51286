"""Gated matrices that store nothing extra for backward.

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

The forward and backward maths is written once (``_linear_fwd``/``_linear_bwd``,
``_embedding_fwd``/``_embedding_bwd``) and reached two ways. In eager mode, through a
``torch.autograd.Function``: the cheapest dispatch. Under ``torch.compile``, through
``torch.library`` custom ops, forward and backward alike, which the compiler sees as opaque nodes:
traced as plain code, AOTAutograd's partitioner is free to keep the forward's W̄ for the backward
instead of forming it again, and it does (measured: one W̄ per matrix saved, under inductor and
aot_eager). The custom ops cost ~0.2 ms more per matrix and step in eager mode, hence the two
routes. Autocast, which does not reach into a custom op, is applied by the Python entry points
exactly as ``F.linear`` would apply it to ``x`` and W̄.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

def _or_empty(grads: tuple[Optional[Tensor], ...], like: Tensor) -> tuple[Tensor, ...]:
    """An op cannot return None for a gradient nobody asked for: a fresh empty tensor instead
    (fresh, on ``like``'s device: an op's outputs must not alias each other or live elsewhere)."""
    return tuple(like.new_empty(0) if g is None else g for g in grads)


def _gain_grad(g_weight: Tensor, weight: Tensor, gain: Tensor) -> Tensor:
    """∂s from the weight gradient of W̄ (G) and W: a dot product per row, or over the whole
    matrix for a scalar s; accumulated in fp32, with no G ⊙ W temporary."""
    g, w = g_weight.float(), weight.float()
    if gain.numel() == 1:
        return torch.dot(g.reshape(-1), w.reshape(-1)).reshape(1).to(gain.dtype)
    return torch.linalg.vecdot(g, w, dim=1).unsqueeze(1).to(gain.dtype)


def _scale(t: Tensor, gain: Optional[Tensor], constant: float, dtype: torch.dtype) -> Tensor:
    """``s ⊙ t`` in ``dtype``: a tensor gain is cast to ``dtype`` first; a float constant is not
    (it multiplies in the op's own arithmetic, as ``t * c`` does)."""
    t = t.to(dtype)
    return t * constant if gain is None else gain.to(dtype) * t


def _row_gains(gain: Optional[Tensor], constant: float, idx: Tensor) -> tuple[Optional[Tensor], float]:
    """The gain of each looked-up row: the scalar (or constant) itself, or the rows' own gains."""
    return (gain if gain is None or gain.numel() == 1 else F.embedding(idx, gain)), constant


# ---- linear -------------------------------------------------------------------------------------

def _linear_fwd(x: Tensor, weight: Tensor, gain: Optional[Tensor], constant: float, scale_dtype: torch.dtype) -> Tensor:
    # W̄ is formed in ``scale_dtype`` (the activation's own dtype) and then cast to x's, which is
    # what F.linear(x, s * W) under autocast computes.
    return F.linear(x, _scale(weight, gain, constant, scale_dtype).to(x.dtype))


def _linear_bwd(gy: Tensor, x: Tensor, weight: Tensor, gain: Optional[Tensor], constant: float,
                need_x: bool, need_w: bool, need_s: bool) -> tuple[Optional[Tensor], ...]:
    dt = gy.dtype
    g_x = g_w = g_s = None
    if need_x:
        g_x = gy @ _scale(weight, gain, constant, dt)
    if need_w or need_s:
        G = gy.reshape(-1, gy.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(dt)
        if need_s:
            g_s = _gain_grad(G, weight, gain)
        if need_w:
            # In place: G is this backward's own fresh product, and one weight-sized buffer is enough.
            g_w = G.mul_(constant if gain is None else gain.to(dt)).to(weight.dtype)
    return g_x, g_w, g_s


class _EagerLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gain, constant, scale_dtype):
        ctx.save_for_backward(x, weight, gain)
        ctx.constant = constant
        return _linear_fwd(x, weight, gain, constant, scale_dtype)

    @staticmethod
    def backward(ctx, gy):
        x, weight, gain = ctx.saved_tensors
        return *_linear_bwd(gy, x, weight, gain, ctx.constant, *ctx.needs_input_grad[:3]), None, None


@torch.library.custom_op('wesar_foundry::scaled_linear', mutates_args=())
def _linear(x: Tensor, weight: Tensor, gain: Optional[Tensor], constant: float, scale_dtype: torch.dtype) -> Tensor:
    return _linear_fwd(x, weight, gain, constant, scale_dtype)


@_linear.register_fake
def _(x, weight, gain, constant, scale_dtype):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op('wesar_foundry::scaled_linear_backward', mutates_args=())
def _linear_backward(gy: Tensor, x: Tensor, weight: Tensor, gain: Optional[Tensor], constant: float,
                     need_x: bool, need_w: bool, need_s: bool) -> tuple[Tensor, Tensor, Tensor]:
    grads = _linear_bwd(gy, x, weight, gain, constant, need_x, need_w, need_s)
    return _or_empty(grads, gy)


@_linear_backward.register_fake
def _(gy, x, weight, gain, constant, need_x, need_w, need_s):
    empty = gy.new_empty(0)
    return (gy.new_empty(x.shape) if need_x else empty, weight.new_empty(weight.shape) if need_w else empty,
            gain.new_empty(gain.shape) if need_s else empty)


def _linear_setup(ctx, inputs, output):
    x, weight, gain, constant, _ = inputs
    ctx.save_for_backward(x, weight, gain)
    ctx.constant = constant


def _linear_grad(ctx, gy):
    x, weight, gain = ctx.saved_tensors
    need = ctx.needs_input_grad[:3]
    g_x, g_w, g_s = _linear_backward(gy, x, weight, gain, ctx.constant, *need)
    return g_x if need[0] else None, g_w if need[1] else None, g_s if need[2] else None, None, None


_linear.register_autograd(_linear_grad, setup_context=_linear_setup)


# ---- embedding ----------------------------------------------------------------------------------

def _embedding_fwd(idx: Tensor, weight: Tensor, gain: Optional[Tensor], constant: float) -> Tensor:
    rows = F.embedding(idx, weight)
    return _scale(rows, *_row_gains(gain, constant, idx), rows.dtype)


def _embedding_bwd(gy: Tensor, idx: Tensor, weight: Tensor, gain: Optional[Tensor], constant: float,
                   need_w: bool, need_s: bool) -> tuple[Optional[Tensor], Optional[Tensor]]:
    flat_idx, flat_gy = idx.reshape(-1), gy.reshape(-1, gy.shape[-1])
    g_w = g_s = None
    if need_w:
        scaled = _scale(flat_gy, *_row_gains(gain, constant, flat_idx), gy.dtype)
        g_w = torch.zeros_like(weight).index_add_(0, flat_idx, scaled.to(weight.dtype))
    if need_s:
        # ⟨gy, W[i]⟩ per looked-up row, the rows gathered again (transiently), accumulated per token id.
        dots = torch.linalg.vecdot(flat_gy.float(), F.embedding(flat_idx, weight).float(), dim=1).unsqueeze(1)
        g_s = (dots.sum().reshape(1) if gain.numel() == 1
               else torch.zeros(gain.shape, dtype=torch.float32, device=gain.device).index_add_(0, flat_idx, dots))
        g_s = g_s.to(gain.dtype)
    return g_w, g_s


class _EagerEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, weight, gain, constant):
        ctx.save_for_backward(idx, weight, gain)
        ctx.constant = constant
        return _embedding_fwd(idx, weight, gain, constant)

    @staticmethod
    def backward(ctx, gy):
        idx, weight, gain = ctx.saved_tensors
        return None, *_embedding_bwd(gy, idx, weight, gain, ctx.constant, *ctx.needs_input_grad[1:3]), None


@torch.library.custom_op('wesar_foundry::scaled_embedding', mutates_args=())
def _embedding(idx: Tensor, weight: Tensor, gain: Optional[Tensor], constant: float) -> Tensor:
    return _embedding_fwd(idx, weight, gain, constant)


@_embedding.register_fake
def _(idx, weight, gain, constant):
    return weight.new_empty((*idx.shape, weight.shape[1]))


@torch.library.custom_op('wesar_foundry::scaled_embedding_backward', mutates_args=())
def _embedding_backward(gy: Tensor, idx: Tensor, weight: Tensor, gain: Optional[Tensor], constant: float,
                        need_w: bool, need_s: bool) -> tuple[Tensor, Tensor]:
    grads = _embedding_bwd(gy, idx, weight, gain, constant, need_w, need_s)
    return _or_empty(grads, gy)


@_embedding_backward.register_fake
def _(gy, idx, weight, gain, constant, need_w, need_s):
    empty = gy.new_empty(0)
    return weight.new_empty(weight.shape) if need_w else empty, gain.new_empty(gain.shape) if need_s else empty


def _embedding_setup(ctx, inputs, output):
    idx, weight, gain, constant = inputs
    ctx.save_for_backward(idx, weight, gain)
    ctx.constant = constant


def _embedding_grad(ctx, gy):
    idx, weight, gain = ctx.saved_tensors
    need = ctx.needs_input_grad[1:3]
    g_w, g_s = _embedding_backward(gy, idx, weight, gain, ctx.constant, *need)
    return None, g_w if need[0] else None, g_s if need[1] else None, None


_embedding.register_autograd(_embedding_grad, setup_context=_embedding_setup)


# ---- the two entry points: eager through autograd.Function, compiled through the opaque ops -----

def _split(gain: Tensor | float) -> tuple[Optional[Tensor], float]:
    return (None, float(gain)) if isinstance(gain, float) else (gain, 1.0)


def scaled_linear(x: Tensor, weight: Tensor, gain: Tensor | float) -> Tensor:
    """``F.linear(x, gain ⊙ weight)`` in ``x``'s dtype (autocast's, if on); saves x, weight and gain only."""
    scale_dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type):
        # Outside the op, as autocast would cast F.linear's input: the op saves the cast x, as mm does.
        x = x.to(torch.get_autocast_dtype(x.device.type))
    op = _linear if torch.compiler.is_compiling() else _EagerLinear.apply
    return op(x, weight, *_split(gain), scale_dtype)


def scaled_embedding(idx: Tensor, weight: Tensor, gain: Tensor | float) -> Tensor:
    """``gain[idx] ⊙ weight[idx]`` (or ``gain ⊙ weight[idx]`` for a scalar gain); saves idx, weight, gain."""
    op = _embedding if torch.compiler.is_compiling() else _EagerEmbedding.apply
    return op(idx, weight, *_split(gain))
