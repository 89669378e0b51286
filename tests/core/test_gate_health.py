"""The gate-health rule on synthetic gate trajectories and ratios."""

from __future__ import annotations

import json
import math

import pytest
import torch

from wesar_foundry.core.gate_health import (
    RATIO, SHRINK, SIGN, Gate, GateHealthRule, GateHealthTracker, conditions, read_gates, summary,
)

DOWN = Gate('model.layers.7.mlp.down_proj.alpha', 'model.layers.7.mlp.down_proj')
UP = Gate('model.layers.7.mlp.up_proj.alpha', 'model.layers.7.mlp.up_proj')
RULE = GateHealthRule(sign_change=True, min_fraction=0.25, max_ratio=1.0)


def run(trajectory: list[float], rule: GateHealthRule = RULE, gate: Gate = DOWN) -> list:
    """Feed one gate's values (the first is α₀, read at the start) step by step; all warnings."""
    t = GateHealthTracker(rule)
    t.observe_initial({gate.name: trajectory[0]})
    return [w for step, v in enumerate(trajectory[1:], 1) for w in t.update(step, [gate], {gate.name: v})]


def test_a_gate_crossing_zero_warns_once_at_the_first_step_of_the_other_sign_naming_matrix_gate_and_step():
    ws = [w for w in run([0.3, 0.2, 0.1, -0.05, -0.1, -0.2]) if w.condition == SIGN]
    assert len(ws) == 1
    w = ws[0]
    assert (w.step, w.matrix, w.gate, w.value, w.initial) == (3, DOWN.matrix, DOWN.name, -0.05, 0.3)
    assert w.describe() == ('gate health at step 3: matrix model.layers.7.mlp.down_proj, gate '
                            'model.layers.7.mlp.down_proj.alpha = -0.05 (initial 0.3): the gate changed sign')


def test_a_gate_at_exactly_zero_has_changed_sign():
    assert SIGN in conditions(RULE, 0.0, 0.3, math.nan)


def test_a_negative_initial_gate_is_healthy_while_negative():
    assert run([-0.5, -0.6, -0.4]) == []
    assert [w.condition for w in run([-0.5, 0.4])] == [SIGN]


def test_a_gate_shrinking_below_min_fraction_warns_then_its_sign_change_warns_separately():
    ws = run([0.4, 0.2, 0.09, 0.05, -0.05])
    assert [(w.step, w.condition) for w in ws] == [(2, SHRINK), (4, SIGN)]
    assert 'fell below min_fraction 0.25 of its initial value (0.225 of it)' in ws[0].describe()


def test_a_gate_at_exactly_min_fraction_is_not_flagged():
    assert run([0.4, 0.1]) == []


def test_a_condition_that_clears_and_comes_back_warns_again():
    ws = run([1.0, 0.2, 0.2, 0.5, 0.1])
    assert [(w.step, w.condition) for w in ws] == [(1, SHRINK), (4, SHRINK)]


def test_an_effective_ratio_above_max_ratio_warns_with_the_ratio_and_the_gate():
    t = GateHealthTracker(RULE)
    t.observe_initial({DOWN.name: 0.3})
    ratios = {DOWN.matrix: 2.5, UP.matrix: 0.01, 'model.lm_head': 0.99}
    ws = t.update(10, [DOWN], {DOWN.name: 0.29}, ratios)
    assert [(w.condition, w.matrix, w.ratio) for w in ws] == [(RATIO, DOWN.matrix, 2.5)]
    assert ws[0].describe().endswith('gate model.layers.7.mlp.down_proj.alpha = 0.29 (initial 0.3): '
                                     'effective update ratio 2.5 > max_ratio 1')


def test_a_matrix_without_a_gate_is_checked_for_its_ratio_only():
    t = GateHealthTracker(RULE)
    [w] = t.update(4, [], {}, {'model.layers.0.mlp.down_proj': 1.5})
    assert (w.condition, w.gate, w.step) == (RATIO, None, 4)
    assert 'matrix model.layers.0.mlp.down_proj, no scalar gate: effective update ratio 1.5' in w.describe()


def test_a_step_without_measured_ratios_neither_clears_nor_repeats_a_ratio_warning():
    t = GateHealthTracker(RULE)
    assert len(t.update(10, [], {}, {'m': 2.0})) == 1
    assert t.update(11, [], {}, None) == []  # not measured: the condition is still on record
    assert t.update(20, [], {}, {'m': 3.0}) == []  # still above: the same episode
    assert t.update(30, [], {}, {'m': 0.5}) == []
    assert len(t.update(40, [], {}, {'m': 2.0})) == 1
    assert t.count == 2


@pytest.mark.parametrize('rule', [GateHealthRule(sign_change=False, min_fraction=0.0, max_ratio=0.0)])
def test_zero_thresholds_and_sign_change_false_turn_every_check_off(rule):
    assert conditions(rule, -1.0, 0.3, 100.0) == []


@pytest.mark.parametrize('value, initial, ratio', [(math.nan, 0.3, math.nan), (math.inf, 0.3, math.nan),
                                                   (0.3, 0.3, math.nan), (0.3, 0.3, math.inf)])
def test_non_finite_values_and_ratios_satisfy_no_condition(value, initial, ratio):
    assert conditions(RULE, value, initial, ratio) == []


def test_initial_values_are_kept_once_seen():
    t = GateHealthTracker(RULE)
    t.observe_initial({DOWN.name: 0.3})
    t.observe_initial({DOWN.name: 0.1, UP.name: 1.7})
    assert t.initial == {DOWN.name: 0.3, UP.name: 1.7}


def test_the_state_round_trips_through_json_and_continues_the_same_episode():
    t = GateHealthTracker(RULE)
    t.observe_initial({DOWN.name: 0.3})
    t.update(1, [DOWN], {DOWN.name: -0.1})
    u = GateHealthTracker(RULE)
    u.load_state_dict(json.loads(json.dumps(t.state_dict())))
    assert (u.initial, u.active, u.count) == (t.initial, t.active, t.count)
    assert (u.initial, u.active, u.count) == ({DOWN.name: 0.3}, {(DOWN.matrix, SIGN)}, 1)
    assert u.update(2, [DOWN], {DOWN.name: -0.2}) == []  # already warned before the checkpoint


def test_summary_gives_the_smallest_signed_fraction_and_the_gates_of_the_other_sign():
    s = summary({DOWN.name: -0.03, UP.name: 1.0}, {DOWN.name: 0.3, UP.name: 2.0})
    assert s == {'min_fraction': pytest.approx(-0.1), 'sign_changes': 1.0}
    assert summary({}, {}) == {}


def test_read_gates_from_shards_gives_every_rank_the_same_value():
    # Two ranks: each gate's one element lives on one of them, the other holds an empty shard.
    rank0 = [torch.tensor([0.3]), torch.empty(0)]
    rank1 = [torch.empty(0), torch.tensor([-1.5])]
    vec1 = torch.cat([torch.tensor([0.0, 0.0]), torch.tensor([-1.5, 1.0])]).double()

    def sum_with_rank1(v: torch.Tensor) -> None:
        v += vec1

    assert read_gates(rank0, sum_with_rank1) == pytest.approx([0.3, -1.5])
    assert read_gates(rank1, lambda v: v.add_(torch.tensor([0.3, 1.0, 0.0, 0.0], dtype=torch.float64))) == \
        pytest.approx([0.3, -1.5])
    assert read_gates([torch.tensor([2.0])]) == [2.0]
    assert math.isnan(read_gates([torch.empty(0)])[0])  # no rank holds it


@pytest.mark.parametrize('kwargs, match', [
    ({'min_fraction': 1.0}, r'k\.min_fraction=1\.0 must be a number in \[0, 1\)'),
    ({'min_fraction': -0.1}, r'min_fraction=-0\.1'),
    ({'max_ratio': -1}, r'k\.max_ratio=-1 must be a finite number >= 0'),
    ({'max_ratio': math.inf}, r'max_ratio=inf'),
    ({'sign_change': 'yes'}, r"k\.sign_change='yes' must be true or false"),
])
def test_out_of_range_thresholds_are_refused_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GateHealthRule(**kwargs).check('k')
