"""The gated linear and embedding save no more for backward than the plain ops, and their
gradients are plain autograd's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wesar_foundry.reparam.functional import scaled_embedding, scaled_linear

ROWS, COLS = 6, 5
GAINS = {'scalar': (1,), 'per_row': (ROWS, 1)}


def inputs(gain_shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, COLS, dtype=dtype, generator=g, requires_grad=True)
    w = torch.randn(ROWS, COLS, dtype=dtype, generator=g, requires_grad=True)
    s = (torch.rand(gain_shape, dtype=dtype, generator=g) + 0.5).requires_grad_()
    idx = torch.randint(0, ROWS, (3, 4), generator=g)
    return x, w, s, idx


@pytest.mark.parametrize('gain', GAINS)
def test_gated_linear_passes_gradcheck_in_fp64(gain):
    x, w, s, _ = inputs(GAINS[gain])
    assert torch.autograd.gradcheck(scaled_linear, (x, w, s))


@pytest.mark.parametrize('gain', GAINS)
def test_gated_embedding_passes_gradcheck_in_fp64(gain):
    _, w, s, idx = inputs(GAINS[gain])
    assert torch.autograd.gradcheck(lambda w, s: scaled_embedding(idx, w, s), (w, s))


def unfused(kind, x, w, s, idx):
    if kind == 'linear':
        return F.linear(x, s.to(x.dtype) * w.to(x.dtype))
    rows = F.embedding(idx, w)
    return (s if s.numel() == 1 else F.embedding(idx, s)).to(rows.dtype) * rows


def outputs_and_grads(kind: str, gain: str, fused: bool) -> list[torch.Tensor]:
    x, w, s, idx = inputs(GAINS[gain], torch.float32, seed=1)
    if fused:
        y = scaled_linear(x, w, s) if kind == 'linear' else scaled_embedding(idx, w, s)
    else:
        y = unfused(kind, x, w, s, idx)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(2)))
    return [y.detach(), w.grad, s.grad] + ([x.grad] if kind == 'linear' else [])


@pytest.mark.parametrize('kind', ['linear', 'embedding'])
@pytest.mark.parametrize('gain', GAINS)
def test_fp32_outputs_and_gradients_equal_plain_autograd(kind, gain):
    got, want = outputs_and_grads(kind, gain, True), outputs_and_grads(kind, gain, False)
    assert torch.equal(got[0], want[0])  # the forward is the same computation
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward that are not the inputs themselves."""
    total = 0
    def pack(t):
        nonlocal total
        if not any(t.data_ptr() == p.data_ptr() for p in fn.inputs):
            total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


class Case:
    def __init__(self, kind, gain):
        self.x, self.w, self.s, self.idx = inputs(GAINS[gain], torch.float32)
        self.x = self.x.detach().requires_grad_()
        self.kind = kind
        self.inputs = [self.x, self.w, self.s, self.idx]


@pytest.mark.parametrize('kind', ['linear', 'embedding'])
@pytest.mark.parametrize('gain', GAINS)
def test_nothing_weight_or_activation_sized_is_saved_beyond_the_plain_op(kind, gain):
    case = Case(kind, gain)
    if kind == 'linear':
        ours = lambda: scaled_linear(case.x, case.w, case.s)  # noqa: E731
        plain = lambda: F.linear(case.x, case.w)  # noqa: E731
        unfused_ = lambda: unfused('linear', case.x, case.w, case.s, case.idx)  # noqa: E731
    else:
        ours = lambda: scaled_embedding(case.idx, case.w, case.s)  # noqa: E731
        plain = lambda: F.embedding(case.idx, case.w)  # noqa: E731
        unfused_ = lambda: unfused('embedding', case.x, case.w, case.s, case.idx)  # noqa: E731
    for f in (ours, plain, unfused_):
        f.inputs = case.inputs
    assert saved_bytes(ours) == saved_bytes(plain) == 0  # only the inputs, by reference
    assert saved_bytes(unfused_) > 0  # what the unfused expression keeps: W̄, or the gathered rows


CONSTANT = 0.25 ** 0.5 / 1.7  # not a power of two: rounding it to a low-precision dtype would show


@pytest.mark.parametrize('kind', ['linear', 'embedding'])
def test_a_fixed_constant_passes_gradcheck_and_saves_nothing_beyond_the_plain_op(kind):
    x, w, _, idx = inputs(GAINS['scalar'])
    if kind == 'linear':
        assert torch.autograd.gradcheck(lambda x, w: scaled_linear(x, w, CONSTANT), (x, w))
        ours, plain = (lambda: scaled_linear(x, w, CONSTANT)), (lambda: F.linear(x, w))
    else:
        assert torch.autograd.gradcheck(lambda w: scaled_embedding(idx, w, CONSTANT), (w,))
        ours, plain = (lambda: scaled_embedding(idx, w, CONSTANT)), (lambda: F.embedding(idx, w))
    ours.inputs = plain.inputs = [x, w, idx]
    assert saved_bytes(ours) == saved_bytes(plain) == 0


@pytest.mark.parametrize('kind', ['linear', 'embedding'])
def test_a_fixed_constant_multiplies_unrounded_in_bf16_as_the_unfused_expression_does(kind):
    x, w, _, idx = inputs(GAINS['scalar'], torch.float32, seed=3)
    x = x.detach().to(torch.bfloat16)
    if kind == 'linear':
        got, want = scaled_linear(x, w, CONSTANT), F.linear(x, w.to(torch.bfloat16) * CONSTANT)
    else:
        got, want = scaled_embedding(idx, w.to(torch.bfloat16), CONSTANT), F.embedding(idx, w.to(torch.bfloat16)) * CONSTANT
    assert torch.equal(got, want)


@pytest.mark.parametrize('kind', ['linear', 'embedding'])
@pytest.mark.parametrize('gain', GAINS)
def test_under_torch_compile_nothing_more_is_saved_either(kind, gain):
    """AOTAutograd's partitioner may keep any forward value it likes for the backward; the ops are
    opaque to it, so it cannot choose W̄ (traced as plain code, it did)."""
    case = Case(kind, gain)
    if kind == 'linear':
        ours = torch.compile(lambda: scaled_linear(case.x, case.w, case.s), backend='aot_eager', fullgraph=True)
    else:
        ours = torch.compile(lambda: scaled_embedding(case.idx, case.w, case.s), backend='aot_eager', fullgraph=True)
    ours.inputs = case.inputs
    ours()  # compile outside the hooks
    assert saved_bytes(ours) == 0


def test_under_bf16_autocast_the_output_is_what_autocast_gives_the_unfused_expression():
    x, w, s, _ = inputs(GAINS['scalar'], torch.float32, seed=4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got, want = scaled_linear(x, w, s), unfused('linear', x, w, s, None)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


@pytest.mark.parametrize('gain', GAINS)
def test_the_ops_torch_compile_sees_pass_gradcheck_too(gain):
    """Compiled code reaches the maths through ``torch.library`` custom ops, eager code through an
    autograd.Function: both routes are checked."""
    from wesar_foundry.reparam.functional import _embedding, _linear
    x, w, s, idx = inputs(GAINS[gain])
    assert torch.autograd.gradcheck(lambda x, w, s: _linear(x, w, s, 1.0, x.dtype), (x, w, s))
    assert torch.autograd.gradcheck(lambda w, s: _embedding(idx, w, s, 1.0), (w, s))
    assert torch.autograd.gradcheck(lambda x, w: _linear(x, w, None, CONSTANT, x.dtype), (x, w))
