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

A column gain c as well (learnable multipliers, W̄ = s ⊙ W ⊙ c, c one scalar per column) takes the
same route with W̄ formed as s ⊙ W ⊙ c; only the gains' gradients change:

    backward   G  = gyᵀ x,   ∂x = gy W̄     (W̄ formed again, transiently)
               ∂W = s ⊙ G ⊙ c
               ∂s = Σ_cols G ⊙ W ⊙ c        (per row; summed over rows too for a scalar s)
               ∂c = Σ_rows G ⊙ W ⊙ s

so again only x and W are saved (W by reference), plus s and c: O(rows + cols). (Scaling the
activations instead, ((x ⊙ c) Wᵀ) ⊙ s, never forms W̄ but makes two activation-sized products
where W̄ is one weight-sized one: 65 ms against 39 ms for 8192 tokens × 512 × 512 in bf16.) The
embedding: y = s_i · W[i] ⊙ c, gathered first and scaled, saving the indices (plus W, s and c by
reference). These two ops (``multiplied_linear``/``multiplied_embedding``) have no
``torch.library`` route yet: under ``torch.compile`` Dynamo traces their autograd.Function as plain
code (one graph, the same gradients), so what is saved for backward is then the partitioner's
choice, and the promise above is the eager one.
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


def _table_gain_grad(dots: Tensor, gain: Tensor, idx: Tensor) -> Tensor:
    """A table's ∂s from each looked-up row's fp32 dot product (tokens, 1): summed for a scalar s,
    accumulated per token id for one gain per row."""
    g_s = (dots.sum().reshape(1) if gain.numel() == 1
           else torch.zeros(gain.shape, dtype=torch.float32, device=gain.device).index_add_(0, idx, dots))
    return g_s.to(gain.dtype)


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
        g_s = _table_gain_grad(dots, gain, flat_idx)
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


# ---- a column gain too: learnable multipliers, W̄ = s ⊙ W ⊙ c (eager route only) ----------------

def _multiplied(t: Tensor, row_gain: Tensor, col_gain: Tensor, dtype: torch.dtype) -> Tensor:
    """``s ⊙ t ⊙ c`` in ``dtype``, the gains cast to it first: a fresh tensor."""
    return _scale(t, row_gain, 1.0, dtype).mul_(col_gain.to(dtype))


def _gains_grads(g: Tensor, t: Tensor, row_gain: Tensor, col_gain: Tensor,
                 need_s: bool, need_c: bool) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """For y = s ⊙ t ⊙ c ((n, cols), s (1,) or (n, 1)) and its gradient ``g``: the dots ⟨g_i ⊙ c, t_i⟩
    per row (n, 1), and ∂c = Σ_i s_i g_i ⊙ t_i (cols,); in fp32, with one g ⊙ t temporary (and mv,
    which autocast leaves in fp32 where it would round matmul and vecdot, should backward run under it)."""
    p = g.float() * t.float()
    dots = torch.mv(p, col_gain.float()).unsqueeze(1) if need_s else None
    g_c = torch.mv(p.t(), row_gain.float().reshape(-1).expand(p.shape[0])).to(col_gain.dtype) if need_c else None
    return dots, g_c


def _linear_cols_fwd(x: Tensor, weight: Tensor, row_gain: Tensor, col_gain: Tensor, scale_dtype: torch.dtype) -> Tensor:
    # As _linear_fwd: W̄ formed in the activation's own dtype, cast to x's, used and dropped.
    return F.linear(x, _multiplied(weight, row_gain, col_gain, scale_dtype).to(x.dtype))


def _linear_cols_bwd(gy: Tensor, x: Tensor, weight: Tensor, row_gain: Tensor, col_gain: Tensor,
                     need_x: bool, need_w: bool, need_s: bool, need_c: bool) -> tuple[Optional[Tensor], ...]:
    dt = gy.dtype
    g_x = g_w = g_s = g_c = None
    if need_x:
        g_x = gy @ _multiplied(weight, row_gain, col_gain, dt)
    if need_w or need_s or need_c:
        G = gy.reshape(-1, gy.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(dt)
        dots, g_c = _gains_grads(G, weight, row_gain, col_gain, need_s, need_c)
        if need_s:
            g_s = (dots.sum().reshape(1) if row_gain.numel() == 1 else dots).to(row_gain.dtype)
        if need_w:
            # In place, as _linear_bwd: G is this backward's own fresh product.
            g_w = G.mul_(row_gain.to(dt)).mul_(col_gain.to(dt)).to(weight.dtype)
    return g_x, g_w, g_s, g_c


def _embedding_cols_fwd(idx: Tensor, weight: Tensor, row_gain: Tensor, col_gain: Tensor) -> Tensor:
    # Gathered first, then scaled (as _embedding_fwd): a whole W̄ would be a second table per step.
    return _multiplied(F.embedding(idx, weight), _row_gains(row_gain, 1.0, idx)[0], col_gain, weight.dtype)


def _embedding_cols_bwd(gy: Tensor, idx: Tensor, weight: Tensor, row_gain: Tensor, col_gain: Tensor, need_idx: bool,
                        need_w: bool, need_s: bool, need_c: bool) -> tuple[Optional[Tensor], ...]:
    flat_idx, flat_gy = idx.reshape(-1), gy.reshape(-1, gy.shape[-1])
    s = _row_gains(row_gain, 1.0, flat_idx)[0]  # (1,), or (tokens, 1): each looked-up row's gain
    g_w = g_s = g_c = None
    if need_w:
        g_w = torch.zeros_like(weight).index_add_(0, flat_idx, _multiplied(flat_gy, s, col_gain, gy.dtype).to(weight.dtype))
    if need_s or need_c:
        # The looked-up rows gathered again (transiently).
        dots, g_c = _gains_grads(flat_gy, F.embedding(flat_idx, weight), s, col_gain, need_s, need_c)
        if need_s:
            g_s = _table_gain_grad(dots, row_gain, flat_idx)
    return None, g_w, g_s, g_c


class _EagerMultiplied(torch.autograd.Function):
    """Either column op: forward ``fwd(inp, weight, row_gain, col_gain, *options)``, backward ``bwd(gy,
    inp, weight, row_gain, col_gain, *needs)`` with a gradient for each of the four; saves those four only."""

    @staticmethod
    def forward(ctx, fwd, bwd, inp, weight, row_gain, col_gain, *options):
        ctx.bwd, ctx.n_options = bwd, len(options)
        ctx.save_for_backward(inp, weight, row_gain, col_gain)
        return fwd(inp, weight, row_gain, col_gain, *options)

    @staticmethod
    def backward(ctx, gy):
        grads = ctx.bwd(gy, *ctx.saved_tensors, *ctx.needs_input_grad[2:6])
        return None, None, *grads, *(None,) * ctx.n_options


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


def multiplied_linear(x: Tensor, weight: Tensor, row_gain: Tensor, col_gain: Tensor) -> Tensor:
    """``F.linear(x, row_gain ⊙ weight ⊙ col_gain)`` in ``x``'s dtype (autocast's, if on); ``row_gain`` (1,)
    or (rows, 1), ``col_gain`` (cols,). Saves x, weight and the two gains only (eager route only: module doc)."""
    scale_dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type):
        # As scaled_linear: cast outside the op, so the op saves the cast x, as mm does.
        x = x.to(torch.get_autocast_dtype(x.device.type))
    return _EagerMultiplied.apply(_linear_cols_fwd, _linear_cols_bwd, x, weight, row_gain, col_gain, scale_dtype)


def multiplied_embedding(idx: Tensor, weight: Tensor, row_gain: Tensor, col_gain: Tensor) -> Tensor:
    """``row_gain[idx] ⊙ weight[idx] ⊙ col_gain`` (``row_gain`` (1,) or (rows, 1), ``col_gain`` (cols,));
    saves idx, weight and the two gains only."""
    return _EagerMultiplied.apply(_embedding_cols_fwd, _embedding_cols_bwd, idx, weight, row_gain, col_gain)
