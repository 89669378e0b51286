"""Learnable multipliers: W̄ = α·diag(r̂)·W·diag(ĉ), r̂ = r/rms(r), ĉ = c/rms(c), α WeSaR's gate.

The reference everywhere is the unfused expression, written here from the parameters by plain
autograd: ``F.linear(x, α r̂[:, None] W ĉ)`` (``F.embedding(i, ...)`` for a table).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wesar_foundry.reparam import WeSaRMatrix, merge_module
from wesar_foundry.reparam.functional import multiplied_embedding, multiplied_linear
from wesar_foundry.reparam.multipliers import MULTIPLIERS, VECTORS, MultiplierMatrix

ROWS, COLS = 64, 48  # a (rows, cols) weight; the embedding's table is (vocab, dim) = (ROWS, COLS)
TOKENS = (4, 32)
KINDS = ('linear', 'embedding')
WITH_VECTORS = [m for m in MULTIPLIERS if VECTORS[m]]
TARGET_STD, SIGMA = 0.02, 0.0063


def matrix(multipliers: str, kind: str = 'linear', *, moved: bool = False, gate_scale: float = 1.0) -> MultiplierMatrix:
    """A freshly initialised matrix; ``moved``: α, r and c taken off their init, as training does."""
    m = MultiplierMatrix(ROWS, COLS, 'q' if kind == 'linear' else 'emb', kind, multipliers=multipliers,
                         gate_scale=gate_scale)
    m.init_(TARGET_STD, SIGMA, generator=torch.Generator().manual_seed(0))
    if moved:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            m.alpha.mul_(1.3)
            for v in (m.row_mult, m.col_mult):
                if v is not None:
                    v.copy_(0.2 + 1.6 * torch.rand(v.shape, generator=g))
    return m


def wesar_twin(m: MultiplierMatrix) -> WeSaRMatrix:
    """WeSaR's matrix with the same weight and α (and gate scale)."""
    w = WeSaRMatrix(ROWS, COLS, m.role, m.kind, gate_scale=m._initial_gate_scale)
    w.init_(TARGET_STD, SIGMA, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w.weight, m.weight) and torch.equal(w.alpha, m.alpha)
    return w


def reference_gains(m: MultiplierMatrix) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """α, r̂ and ĉ from the parameters (None for an absent vector), written independently of the module."""
    alpha = m.alpha if m.gate_scale is None else m.gate_scale * m.alpha
    unit = [None if v is None else v * math.sqrt(v.numel()) / torch.linalg.vector_norm(v) for v in (m.row_mult, m.col_mult)]
    return alpha, *unit


def reference_weight(m: MultiplierMatrix) -> torch.Tensor:
    """W̄ = α r̂[:, None] W ĉ (differentiable)."""
    alpha, r, c = reference_gains(m)
    w = alpha * m.weight
    w = w if r is None else w * r.unsqueeze(1)
    return w if c is None else w * c


def reference(m: MultiplierMatrix, inp: torch.Tensor) -> torch.Tensor:
    w = reference_weight(m)
    return F.linear(inp, w) if m.kind == 'linear' else F.embedding(inp, w.to(m.weight.dtype))


def gathered_first(m: MultiplierMatrix, idx: torch.Tensor) -> torch.Tensor:
    """The embedding's unfused expression without a scaled table: α r̂_i W[i] ĉ."""
    alpha, r, c = reference_gains(m)
    y = alpha * F.embedding(idx, m.weight)
    y = y if r is None else y * F.embedding(idx, r.unsqueeze(1))
    return y if c is None else y * c


def an_input(kind: str, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == 'linear':
        return torch.randn(*TOKENS, COLS, generator=g).requires_grad_()
    return torch.randint(0, ROWS, TOKENS, generator=g)


def run(m: MultiplierMatrix, inp: torch.Tensor, fn, seed: int = 3) -> dict[str, torch.Tensor]:
    """The output of ``fn(m, inp)`` and, after a backward with a fixed random gy, every gradient."""
    inp = inp.detach().requires_grad_() if inp.is_floating_point() else inp
    y = fn(m, inp)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype))
    out = {'y': y.detach()}
    if inp.is_floating_point():
        out['x'] = inp.grad
    out.update({n: p.grad for n, p in m.named_parameters()})
    return out


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: 0 when equal, about the dtype's ε when they differ by rounding."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def fro_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a.float() - b.float()) / torch.linalg.vector_norm(b.float())).item()


FP32_EPS, BF16_EPS = torch.finfo(torch.float32).eps, torch.finfo(torch.bfloat16).eps


# ---- the choice ---------------------------------------------------------------------------------

@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_the_choice_decides_which_vectors_exist_and_they_are_fp32_masters(multipliers):
    m = matrix(multipliers)
    assert set(m.state_dict()) == {'weight', 'alpha', *VECTORS[multipliers]}
    shapes = {'row_mult': (ROWS,), 'col_mult': (COLS,)}
    for name in VECTORS[multipliers]:
        v = getattr(m, name)
        assert v.shape == shapes[name] and v.dtype == torch.float32 and torch.equal(v, torch.ones_like(v))
    m.weight.data = m.weight.data.bfloat16()  # bf16 weights still compute in bf16
    y = m(torch.randn(3, COLS, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for n, p in m.named_parameters() if n != 'weight')


def test_an_unknown_choice_is_refused_by_name_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"model\.multipliers='rows'.*scalar, row, column, row_column"):
        MultiplierMatrix(ROWS, COLS, 'q', multipliers='rows')


# ---- identity at init -----------------------------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_at_init_every_choice_computes_wesars_matrix(multipliers, kind):
    m = matrix(multipliers, kind)
    w = wesar_twin(m)
    assert torch.equal(m.merged_weight(), w.merged_weight())  # r̂ = ĉ = 1 exactly
    inp = an_input(kind)
    assert max_rel(m(inp), w(inp)) <= 4 * FP32_EPS


@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_with_a_gate_scale_alpha_is_wesars_and_the_vectors_survive_to_empty(multipliers):
    """α = s·a as WeSaR stores it; after ``to_empty`` init refills the vectors with exact ones."""
    m = MultiplierMatrix(ROWS, COLS, 'down', multipliers=multipliers, gate_scale=0.01, device='meta').to_empty(device='cpu')
    m.init_(TARGET_STD, SIGMA, generator=torch.Generator().manual_seed(0))
    w = wesar_twin(m)
    assert m.alpha.item() == pytest.approx(TARGET_STD / SIGMA / 0.01, rel=1e-6)
    assert torch.equal(m.merged_weight(), w.merged_weight())
    for name in VECTORS[multipliers]:
        assert torch.equal(getattr(m, name), torch.ones_like(getattr(m, name)))


# ---- the op equals the unfused expression ------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_fp32_output_and_every_gradient_equal_the_unfused_reference(multipliers, kind):
    m = matrix(multipliers, kind, moved=True, gate_scale=0.5)
    twin = copy.deepcopy(m)
    inp = an_input(kind)
    got, want = run(m, inp, lambda m, i: m(i)), run(twin, inp, reference)
    assert set(got) == set(want) == {'y', 'weight', 'alpha', *VECTORS[multipliers]} | ({'x'} if kind == 'linear' else set())
    for name in got:
        assert max_rel(got[name], want[name]) <= 1e-5, name


def assert_as_exact_as_the_unfused_expression(got: dict, unfused: dict, exact: dict) -> None:
    """In bf16 both round differently (the unfused expression rounds W̄ once; the op rounds x ⊙ ĉ
    or W[i] ⊙ ĉ and the output, a table's backward accumulates in fp32): each quantity of the
    op must be within one bf16 ε of the fp32 answer, or no further from it than twice the unfused
    expression's own error."""
    assert set(got) == set(unfused) == set(exact)
    for name in got:
        err, unfused_err = fro_rel(got[name], exact[name]), fro_rel(unfused[name], exact[name])
        assert err <= max(2 * unfused_err, BF16_EPS), (name, err, unfused_err)


@pytest.mark.parametrize('multipliers', WITH_VECTORS)
def test_under_bf16_autocast_the_linear_is_as_exact_as_the_unfused_expression(multipliers):
    m = matrix(multipliers, 'linear', moved=True)
    twin, fp32 = copy.deepcopy(m), copy.deepcopy(m)
    inp = an_input('linear')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got, unfused = run(m, inp, lambda m, i: m(i)), run(twin, inp, reference)
    assert got['y'].dtype == unfused['y'].dtype == torch.bfloat16
    assert_as_exact_as_the_unfused_expression(got, unfused, run(fp32, inp, reference))


@pytest.mark.parametrize('multipliers', WITH_VECTORS)
def test_a_bf16_embedding_table_is_as_exact_as_the_unfused_expression(multipliers):
    m = matrix(multipliers, 'embedding', moved=True)
    fp32 = copy.deepcopy(m)  # the same values, kept in fp32
    m.weight.data = m.weight.data.bfloat16()
    fp32.weight.data = m.weight.data.float()
    twin = copy.deepcopy(m)
    inp = an_input('embedding')
    got, unfused = run(m, inp, lambda m, i: m(i)), run(twin, inp, reference)
    assert got['y'].dtype == unfused['y'].dtype == torch.bfloat16
    assert_as_exact_as_the_unfused_expression(got, unfused, run(fp32, inp, reference))


@pytest.mark.parametrize('row_gain', ['scalar', 'per_row'])
def test_the_ops_pass_gradcheck_in_fp64(row_gain):
    rows, cols = 6, 5  # small: gradcheck differentiates numerically, one input element at a time
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, cols, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(rows, cols, dtype=torch.float64, generator=g, requires_grad=True)
    shape = (1,) if row_gain == 'scalar' else (rows, 1)
    s = (torch.rand(shape, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    c = (torch.rand(cols, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    idx = torch.randint(0, rows, (3, 4), generator=g)
    assert torch.autograd.gradcheck(multiplied_linear, (x, w, s, c))
    assert torch.autograd.gradcheck(lambda w, s, c: multiplied_embedding(idx, w, s, c), (w, s, c))


# ---- the scale symmetry ---------------------------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('multipliers', WITH_VECTORS)
def test_rescaling_either_vector_by_any_factor_changes_nothing(multipliers, kind):
    m = matrix(multipliers, kind, moved=True)
    inp = an_input(kind)
    before, merged = m(inp).detach(), m.merged_weight()
    for k_row, k_col in ((3.7, 1 / 3.7), (0.01, 1.0), (1.0, 250.0), (5.0, 5.0)):
        moved = copy.deepcopy(m)
        with torch.no_grad():
            if moved.row_mult is not None:
                moved.row_mult.mul_(k_row)
            if moved.col_mult is not None:
                moved.col_mult.mul_(k_col)
        assert max_rel(moved(inp), before) <= 4 * FP32_EPS, (k_row, k_col)
        assert max_rel(moved.merged_weight(), merged) <= 4 * FP32_EPS, (k_row, k_col)


@pytest.mark.parametrize('multipliers', WITH_VECTORS)
def test_a_vectors_gradient_is_orthogonal_to_it_so_the_loss_never_pulls_on_its_scale(multipliers):
    m = matrix(multipliers, moved=True)
    grads = run(m, an_input('linear'), lambda m, i: m(i))
    for name in VECTORS[multipliers]:
        v, g = getattr(m, name).detach(), grads[name]
        assert torch.linalg.vector_norm(g) > 0
        assert abs(torch.dot(g, v)).item() <= 1e-5 * (torch.linalg.vector_norm(g) * torch.linalg.vector_norm(v)).item()


# ---- W̄ and the merge -----------------------------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_merged_and_effective_weights_are_the_reference_and_merge_to_a_plain_module(multipliers, kind):
    m = matrix(multipliers, kind, moved=True, gate_scale=0.5)
    with torch.no_grad():
        want = reference_weight(m)
    merged = m.merged_weight()
    assert merged.dtype == torch.float32 and not merged.requires_grad
    assert max_rel(merged, want) <= 2 * FP32_EPS
    eff = m.effective_weight(torch.bfloat16)
    assert eff.dtype == torch.bfloat16 and eff.requires_grad  # differentiable, in the asked dtype
    assert fro_rel(eff, want) <= 1e-2
    assert max_rel(m.effective_weight(), want) <= 2 * FP32_EPS
    plain = merge_module(m)
    assert type(plain) is (nn.Linear if kind == 'linear' else nn.Embedding)
    inp = an_input(kind)
    with torch.no_grad():
        assert max_rel(plain(inp), m(inp)) <= 4 * FP32_EPS


def test_gain_keeps_the_row_gain_contract_and_is_refused_when_a_column_vector_breaks_it():
    """``W̄ = gain() ⊙ weight`` is what code written for row gains multiplies; with ĉ it would be
    silently wrong, so it raises instead."""
    m = matrix('row', moved=True)
    assert max_rel(m.gain() * m.weight, m.merged_weight()) <= 2 * FP32_EPS
    for multipliers in ('column', 'row_column'):
        with pytest.raises(TypeError, match='merged_weight'):
            matrix(multipliers).gain()


# ---- memory ---------------------------------------------------------------------------------------

def saved(fn, inputs) -> list[torch.Tensor]:
    """The tensors autograd saves for backward while ``fn()`` runs, but for ``inputs`` themselves
    (the input and the parameters, which every op saves by reference)."""
    ptrs = {t.data_ptr() for t in inputs}
    out = []

    def pack(t):
        if t.data_ptr() not in ptrs:
            out.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return out


def nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize('kind, autocast', [('linear', False), ('linear', True), ('embedding', False)],
                         ids=['linear', 'linear_bf16_autocast', 'embedding'])  # autocast does not touch a table
@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_backward_keeps_no_more_than_the_plain_op_plus_o_rows_plus_cols(multipliers, kind, autocast):
    m = matrix(multipliers, kind, moved=True)
    inp = an_input(kind)
    inputs = [inp, *m.parameters()]
    plain_op = F.linear if kind == 'linear' else F.embedding
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        ours = saved(lambda: m(inp), inputs)
        plain = saved(lambda: plain_op(inp, m.weight), inputs)
        unfused = saved(lambda: (reference if kind == 'linear' else gathered_first)(m, inp), inputs)
    # Beyond what the plain op keeps (under autocast: the cast x, as mm keeps it), only vectors.
    big = [t.numel() for t in ours if t.numel() > max(ROWS, COLS)]
    assert big == ([inp.numel()] if autocast else [])
    # O(rows + cols): at most four fp32 vectors as long as rows + cols (α·r̂, r̂, ĉ and scalars).
    assert nbytes(ours) - nbytes(plain) <= 4 * 4 * (ROWS + COLS), (nbytes(ours), nbytes(plain))
    # The unfused expression keeps W̄ (for a table, the gathered rows), at least a bf16 copy of W
    # more than the op: the test can fail.
    assert nbytes(unfused) - nbytes(ours) >= 2 * ROWS * COLS
