"""Target stds per role: He and Small init, the residual branches shrunk by 1/√(2N), fused matrices."""

import math

import pytest

from wesar_foundry.core.init_targets import init_target_of, target_std

SIGMA = math.sqrt(4e-5)


@pytest.mark.parametrize('d, n, gates', [
    # WeSaR's gates α = σ_i/σ for σ² = 4e-5 at two of the paper's model sizes, to 6 digits.
    (2048, 24, {'q': 3.49386, 'k': 3.49386, 'v': 3.49386, 'up': 3.49386, 'head': 3.49386, 'o': 0.50429, 'down': 0.35659, 'emb': 158.114}),
    (5120, 40, {'q': 2.20971, 'up': 2.20971, 'head': 2.20971, 'o': 0.24705, 'down': 0.17469, 'emb': 158.114}),
])
def test_he_gates_match_the_paper(d, n, gates):
    for role, alpha in gates.items():
        assert target_std(role, 'he', d, n) / SIGMA == pytest.approx(alpha, rel=2e-5), role  # the values above are rounded to 6 digits


def test_small_init_is_two_fifths_over_d_with_residual_roles_shrunk():
    d, n = 768, 12
    base = math.sqrt(2 / (5 * d))
    assert target_std('q', 'small', d, n) == pytest.approx(base)
    assert target_std('head', 'small', d, n) == pytest.approx(base)
    assert target_std('o', 'small', d, n) == pytest.approx(base / math.sqrt(2 * n))
    assert target_std('down', 'small', d, n) == pytest.approx(base / math.sqrt(2 * n))


def test_he_down_uses_the_mlp_fan_in():
    assert target_std('down', 'he', 64, 4, fan_in=256) == pytest.approx(math.sqrt(2 / (8 * 4 * 64)))
    assert target_std('down', 'he', 64, 4, fan_in=100) == pytest.approx(math.sqrt(2 / (100 * 8)))


@pytest.mark.parametrize('role, target', [('bias', 'he'), ('q', 'xavier')])
def test_unknown_role_or_target_is_refused_with_the_allowed_values(role, target):
    with pytest.raises(ValueError, match='allowed'):
        target_std(role, target, 64, 2)


@pytest.mark.parametrize('target', ['he', 'small'])
@pytest.mark.parametrize('fused, parts', [('qkv', ('q', 'k', 'v')), ('gate_up', ('gate', 'up'))])
def test_a_fused_matrix_has_the_common_target_of_its_parts(target, fused, parts):
    # Why one gate per fused matrix suffices: every part asks for the same std.
    assert {target_std(p, target, 64, 4) for p in parts} == {target_std(fused, target, 64, 4)}


@pytest.mark.parametrize('init_config, target', [
    ({}, 'he'), ({'name': 'wesar_'}, 'he'), ({'name': 'wesar_', 'target': 'small'}, 'small'),
    ({'name': 'small'}, 'small'), ({'name': 'he', 'sigma2': 4e-5}, 'he'),
])
def test_an_init_configs_target_is_the_init_name_for_he_and_small_else_its_target(init_config, target):
    assert init_target_of(init_config) == target
