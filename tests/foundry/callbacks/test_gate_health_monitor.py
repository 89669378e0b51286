"""``gate_health_monitor`` in real tiny runs: warns when gates cross zero, stops on request, stays
silent on a healthy run, and keeps the initial gate values across a resume."""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import fields

import pytest
from llmfoundry.command_utils import train

from tests.foundry.callbacks.helpers import ParamRecorder, find, logged
from wesar_foundry.core.gate_health import GateHealthRule
from wesar_foundry.foundry.callbacks.gate_health_monitor import GateHealthError, GateHealthMonitor

# Gates far below 1 at a high learning rate: at σ² = 4 the tiny model's gates start at
# α₀ = σ_i/σ = 0.088 (q, k, v, up, head), 0.044 (W_o), 0.031 (W_d), and Adam moves each by up to
# lr = 1e-2 per step, so a W_d gate crosses zero within 10 steps (as one does at the demo's size
# with σ² = 1e-2 by step 55, see bench/gate_health.py).
CROSSING = ('model.init_config.sigma2=4.0', 'optimizer.lr=1e-2', 'max_duration=STEPSba')
STEPS = 24


def crossing(*extra: str, steps: int = STEPS) -> tuple[str, ...]:
    return tuple(o.replace('STEPS', str(steps)) for o in CROSSING) + extra


def monitor(options: str = '') -> str:
    return f'callbacks={{gate_health_monitor: {{interval: 1{options}}}, test_param_recorder: {{}}}}'


@pytest.fixture
def warned():
    """The monitor's log warnings. Its own handler: train() resets the root logger's (basicConfig
    force=True), which removes pytest's caplog handler."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger('wesar_foundry.foundry.callbacks.gate_health_monitor')
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.slow
def test_gates_crossing_zero_are_warned_naming_matrix_gate_and_step(train_cfg, warned):
    trainer = train(train_cfg(*crossing(monitor())))
    mon, rec = find(trainer, GateHealthMonitor), find(trainer, ParamRecorder)
    signs = [w for w in mon.warnings if w['condition'] == 'sign']
    assert signs, f'no gate crossed zero; warnings: {mon.warnings}'
    for w in signs:
        gate, step = w['gate'], w['step']
        # The value named is the gate's after that optimizer step; its sign differs from α₀'s, and
        # at the step before it had not yet changed (a warning is the onset).
        assert w['value'] == pytest.approx(float(rec.after[step][gate]))
        assert w['initial'] == pytest.approx(float(rec.before[1][gate]))
        assert w['value'] * w['initial'] <= 0 < float(rec.before[step][gate]) * w['initial']
        assert gate == w['matrix'] + '.alpha'
        assert any(m.startswith(f'gate health at step {step}: matrix {w["matrix"]}, gate {gate} = ') for m in warned)
    assert len(warned) == len(mon.warnings)
    count = logged(trainer, 'gate_health/warnings')
    assert sorted(count) == list(range(1, STEPS + 1))
    assert count[STEPS] == len(mon.warnings) > 0
    assert min(logged(trainer, 'gate_health/min_fraction').values()) < 0
    assert max(logged(trainer, 'gate_health/sign_changes').values()) >= len({w['gate'] for w in signs})
    # No update_ratio_monitor in this run: the ratios were measured by the monitor itself.
    assert sorted(logged(trainer, 'gate_health/max_ratio')) == list(range(1, STEPS + 1))


def test_action_stop_raises_at_the_sign_change_naming_matrix_gate_value_and_step(train_cfg):
    # Only the sign check on, so the first warning is the crossing itself.
    with pytest.raises(GateHealthError) as info:
        train(train_cfg(*crossing(monitor(', action: stop, min_fraction: 0, max_ratio: 0'))))
    m = re.match(r'gate health at step (\d+): matrix (model\.\S+), gate (model\.\S+) = (-?[\d.e-]+) '
                 r'\(initial ([\d.e-]+)\): the gate changed sign .*action=stop', str(info.value))
    assert m, str(info.value)
    step, matrix, gate, value, initial = m.groups()
    assert int(step) < STEPS and gate == matrix + '.alpha'
    assert float(value) <= 0 < float(initial)


@pytest.mark.slow
def test_the_default_rule_is_silent_on_a_healthy_run(train_cfg):
    # The shipped tiny YAML's WeSaR (σ² = 4e-5, lr 1e-3), ratios from the run's update_ratio_monitor.
    trainer = train(train_cfg('max_duration=20ba', 'callbacks={gate_health_monitor: {interval: 1}, '
                                                   'update_ratio_monitor: {interval: 2}}'))
    mon = find(trainer, GateHealthMonitor)
    assert mon.warnings == [] and mon.tracker.count == 0
    assert set(logged(trainer, 'gate_health/warnings').values()) == {0}
    assert min(logged(trainer, 'gate_health/min_fraction').values()) > 0.9
    assert sorted(logged(trainer, 'gate_health/max_ratio')) == list(range(2, 21, 2))


@pytest.mark.slow
def test_a_resumed_run_keeps_the_initial_gate_values_and_its_warnings(train_cfg, tmp_path):
    folder = tmp_path / 'ckpt'
    full = train(train_cfg(*crossing(monitor(), f'save_folder={folder}', 'save_interval=14ba')))
    reference = find(full, GateHealthMonitor)
    before = [w for w in reference.warnings if w['step'] <= 14]
    assert before, 'no warning before the checkpoint: the run does not test what carries over'

    resumed = train(train_cfg(*crossing(monitor(), f'load_path={folder}/ep0-ba14-rank0.pt')))
    mon = find(resumed, GateHealthMonitor)
    # α₀ are those of step 0, not the gates' values at step 14 when the resumed run started.
    assert mon.tracker.initial == reference.tracker.initial
    at_14 = find(full, ParamRecorder).after[14]
    assert any(abs(float(at_14[g]) - a0) > 0.5 * abs(a0) for g, a0 in mon.tracker.initial.items())
    # So the resumed run measures what the uninterrupted one measured, and repeats no warning.
    assert logged(resumed, 'gate_health/min_fraction') == pytest.approx(
        {s: v for s, v in logged(full, 'gate_health/min_fraction').items() if s > 14}, rel=1e-4)
    key = lambda ws: [(w['step'], w['condition'], w['matrix']) for w in ws]  # noqa: E731
    assert key(mon.warnings) == key(reference.warnings)
    assert min(logged(resumed, 'gate_health/warnings').values()) >= len(before)


def test_multipliers_vector_entries_that_change_sign_or_collapse_are_named_and_healthy_vectors_pass(train_cfg, warned):
    # reparam multipliers (row_column): one entry of a row vector set negative, one of a column
    # vector to a twentieth of its rms, before step 4; every other vector trains as it would.
    rows, cols = 'model.model.layers.1.mlp.down_proj.row_mult', 'model.model.layers.0.self_attn.q_proj.col_mult'
    entries = f'[{{name: {rows}, index: 3, value: -0.5}}, {{name: {cols}, index: 7, value: 0.05}}]'
    trainer = train(train_cfg('max_duration=6ba', 'callbacks={gate_health_monitor: {interval: 1, max_ratio: 0}, '
                              f'test_set_entries: {{step: 4, entries: {entries}}}}}',
                              reparam='multipliers', multipliers='row_column'))
    mon = find(trainer, GateHealthMonitor)
    got = [(w['step'], w['condition'], w['vector'], w['gate'], w['entries']) for w in mon.warnings]
    assert got == [(4, 'shrink', cols, f'{cols}[7]', 1), (4, 'sign', rows, f'{rows}[3]', 1)]  # in module order
    assert all(w['matrix'] == w['vector'].rpartition('.')[0] for w in mon.warnings)
    assert len(warned) == 2 and f'vector {rows}: 1 of 32 entries are <= 0' in warned[1]
    assert len({v.name for v, _ in mon._vectors}) == 2 * len(trainer.state.model.model.reparam_modules()) > 2
    vmin, signs = logged(trainer, 'gate_health/vector_min_fraction'), logged(trainer, 'gate_health/vector_sign_changes')
    assert sorted(vmin) == list(range(1, 7)) and min(vmin[s] for s in (1, 2, 3)) > 0.9  # healthy before step 4
    assert vmin[4] < 0 and signs[4] == 1 and signs[3] == 0
    assert min(logged(trainer, 'gate_health/min_fraction').values()) > 0.9  # the α gates are checked as before


@pytest.mark.parametrize('kwargs, match', [
    ({'vector_min_fraction': -1}, r'gate_health_monitor\.vector_min_fraction=-1 must be a number in \[0, 1\)'),
    ({'action': 'halt'}, r"gate_health_monitor\.action='halt'; allowed: log, stop"),
    ({'ratios': 'always'}, r"gate_health_monitor\.ratios='always'; allowed: auto, monitor, none"),
    ({'interval': 0}, r'gate_health_monitor\.interval=0 must be an integer >= 1'),
    ({'min_fraction': 1.5}, r'gate_health_monitor\.min_fraction=1\.5 must be a number in \[0, 1\)'),
    ({'max_ratio': -1.0}, r'gate_health_monitor\.max_ratio=-1\.0 must be a finite number >= 0'),
    ({'min_fracton': 0.1}, r'unknown option\(s\) min_fracton'),
])
def test_bad_options_fail_at_construction_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GateHealthMonitor(**kwargs)


def test_the_rules_keys_are_the_gate_health_rules_fields_with_its_defaults():
    rule = fields(GateHealthRule)
    params = inspect.signature(GateHealthMonitor).parameters
    assert rule and [f.name for f in rule] == list(params)[:len(rule)]
    assert all(params[f.name].default == f.default for f in rule)
    assert GateHealthMonitor(min_fraction=0.1).tracker.rule.min_fraction == 0.1


def test_an_unquoted_yaml_off_turns_the_ratios_off():
    assert GateHealthMonitor(ratios=False).config.ratios == 'none'
