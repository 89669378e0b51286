"""Residual Scaling: a fixed 1/√(2N) on W_o, W_d; their stored init drops that factor."""

import math

import pytest

from wesar_foundry.reparam import ResidualScaledMatrix


@pytest.mark.parametrize('role, scaled', [('o', True), ('down', True), ('q', False), ('up', False)])
def test_only_residual_roles_are_scaled_by_a_constant(role, scaled):
    m = ResidualScaledMatrix(256, 256, role, n_layers=8)
    target = 0.01 / (4.0 if scaled else 1.0)
    m.init_(target_std=target, sigma=123.0)  # σ is irrelevant: nothing is gated
    assert m.scale == (1 / math.sqrt(16) if scaled else 1.0)
    assert m.weight.std().item() == pytest.approx(0.01 if scaled else target, rel=0.03)
    assert m.merged_weight().std().item() == pytest.approx(target, rel=0.03)
    assert [n for n, _ in m.named_parameters()] == ['weight'] and 'scale' not in m.state_dict()


@pytest.mark.parametrize('kind', ['linear', 'embedding'])
def test_the_scaled_matrix_saves_for_backward_only_what_a_plain_one_saves(kind):
    import torch

    def saved_elements(m, x):
        n = 0
        def pack(t):
            nonlocal n
            n += 0 if t.data_ptr() in (m.weight.data_ptr(), x.data_ptr()) else t.numel()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x)
        return n

    scaled = ResidualScaledMatrix(64, 32, 'o', kind, n_layers=8)
    plain = ResidualScaledMatrix(64, 32, 'q', kind, n_layers=8)
    x = torch.randn(4, 32) if kind == 'linear' else torch.randint(0, 64, (4, 8))
    assert scaled.scale != 1.0 and plain.scale == 1.0
    assert saved_elements(scaled, x) == saved_elements(plain, x) == 0
