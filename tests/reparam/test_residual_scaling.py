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
