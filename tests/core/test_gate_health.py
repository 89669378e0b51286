"""The gate-health rule on synthetic gate trajectories and ratios."""

from __future__ import annotations

import json
import math

import pytest
import torch

from wesar_foundry.core.gate_health import (
    RATIO, SHRINK, SIGN, Gate, GateHealthRule, GateHealthTracker, Vector, conditions, read_gates, summary,
    vector_conditions, vector_summary,
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


# ---- the multipliers' row and column vectors: every entry a gate, read relative to the rms ----------

ROWS = Vector('model.layers.7.mlp.down_proj.row_mult', 'model.layers.7.mlp.down_proj')
COLS = Vector('model.layers.7.mlp.down_proj.col_mult', 'model.layers.7.mlp.down_proj')


def healthy(n: int = 8, seed: int = 0) -> torch.Tensor:
    """A trained-looking vector: entries spread around 1, all within a factor 3 of each other."""
    return 1 + 0.5 * (2 * torch.rand(n, generator=torch.Generator().manual_seed(seed)) - 1)


def test_healthy_vectors_pass():
    t = GateHealthTracker(GateHealthRule())
    assert t.update(10, [], {}, None, {ROWS: healthy(), COLS: healthy(seed=1) * 1e3}) == []
    assert vector_conditions(GateHealthRule(), torch.ones(5)) == {}  # r = c = 1 at init


def test_a_vector_entry_that_changed_sign_is_named_like_a_gate():
    v = healthy()
    v[5] = -0.02
    v[2] = 0.0
    t = GateHealthTracker(GateHealthRule())
    [w] = [w for w in t.update(10, [], {}, None, {ROWS: v, COLS: healthy(seed=1)}) if w.condition == SIGN]
    rms = float(v.double().square().mean().sqrt())
    assert (w.step, w.matrix, w.vector, w.gate, w.entries, w.length) == (10, ROWS.matrix, ROWS.name, f'{ROWS.name}[5]', 2, 8)
    assert w.value == pytest.approx(-0.02 / rms) and w.initial == 1.0 and w.bound == 0.0
    assert w.describe() == (f'gate health at step 10: matrix {ROWS.matrix}, vector {ROWS.name}: 2 of 8 entries '
                            f'are <= 0 (initial 1); the worst, {ROWS.name}[5], is {w.value:.4g} of the rms')
    # The same episode is not warned twice; the other vector is healthy.
    assert [w for w in t.update(20, [], {}, None, {ROWS: v, COLS: healthy(seed=1)}) if w.condition == SIGN] == []
    assert t.active >= {(ROWS.name, SIGN)} and not any(a[0] == COLS.name for a in t.active)


def test_a_collapsed_vector_entry_is_named_relative_to_the_vectors_rms():
    v = healthy(16) * 40.0  # the vectors' scale is free (W̄ sees r/rms(r)): only the relative size counts
    v[11] = 0.05 * float(v.square().mean().sqrt())
    t = GateHealthTracker(GateHealthRule())
    [w] = t.update(30, [], {}, None, {COLS: v})
    assert (w.condition, w.vector, w.gate, w.entries, w.bound) == (SHRINK, COLS.name, f'{COLS.name}[11]', 1, 0.1)
    assert w.value == pytest.approx(float(v[11] / v.square().mean().sqrt()))
    assert 'fell below vector_min_fraction 0.1 of its rms' in w.describe()
    # It recovers: the condition clears, and a new collapse warns again.
    v[11] = float(v.square().mean().sqrt())
    assert t.update(40, [], {}, None, {COLS: v}) == [] and t.active == set()


def test_a_vector_entry_at_exactly_vector_min_fraction_is_not_flagged_and_zero_turns_the_check_off():
    v = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.25])
    rel = float(v[4] / v.square().mean().sqrt())
    assert vector_conditions(GateHealthRule(vector_min_fraction=rel), v) == {}
    assert SHRINK in vector_conditions(GateHealthRule(vector_min_fraction=rel * 1.001), v)
    assert vector_conditions(GateHealthRule(sign_change=False, vector_min_fraction=0.0), -torch.ones(3)) == {}


def test_non_finite_vector_entries_meet_no_condition():
    assert vector_conditions(GateHealthRule(), torch.tensor([1.0, math.inf, 1.0])) == {}
    v = torch.tensor([1.0, math.nan, -1.0, 1.0])
    assert vector_conditions(GateHealthRule(), v) == {}  # the rms is nan: nothing is read


def test_vector_summary_gives_the_smallest_entry_over_rms_and_the_entries_of_the_other_sign():
    a, b = torch.tensor([1.0, 1.0, -1.0, 1.0]), torch.tensor([2.0, 2.0])
    assert vector_summary([a, b]) == {'vector_min_fraction': -1.0, 'vector_sign_changes': 1.0}
    assert vector_summary([]) == {}


@pytest.mark.parametrize('kwargs, match', [
    ({'vector_min_fraction': 1.0}, r'k\.vector_min_fraction=1\.0 must be a number in \[0, 1\)'),
    ({'min_fraction': 1.0}, r'k\.min_fraction=1\.0 must be a number in \[0, 1\)'),
    ({'min_fraction': -0.1}, r'min_fraction=-0\.1'),
    ({'max_ratio': -1}, r'k\.max_ratio=-1 must be a finite number >= 0'),
    ({'max_ratio': math.inf}, r'max_ratio=inf'),
    ({'sign_change': 'yes'}, r"k\.sign_change='yes' must be true or false"),
])
def test_out_of_range_thresholds_are_refused_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GateHealthRule(**kwargs).check('k')
