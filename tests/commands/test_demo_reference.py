"""The demo's shipped reference sweep (``wesar_foundry/commands/demo_reference.json``): what it is
generated from, the shape it was measured at, and the lrs the default demo takes from it."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

from wesar_foundry.commands.demo import FALLBACK_LR, REFERENCE, SHAPE_KEYS, DemoConfig, load_reference, method_lrs

ROOT = Path(__file__).resolve().parents[2]


def _bench_script():
    spec = importlib.util.spec_from_file_location('demo_reference_script', ROOT / 'bench' / 'demo_reference.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_reference_is_what_bench_demo_reference_writes_from_the_sigma_auto_results():
    script = _bench_script()
    expected = script.build(json.loads((ROOT / 'bench' / 'results' / 'sigma_auto' / 'table.json').read_text()))
    assert load_reference() == expected
    assert REFERENCE.read_text() == json.dumps(expected, indent=1) + '\n'  # byte for byte: regenerate, do not edit


def test_the_reference_records_its_source_seeds_and_numbers_of_bench_readme_section_10():
    ref = load_reference()
    assert ref['source'] == 'bench/sigma_auto.py' and ref['date'] == '2026-12-01' and ref['seeds'] == [17, 18, 19]
    assert ref['lrs'] == [1e-3, 3e-3, 1e-2, 3e-2]
    # bench/README.md section 10's table: each method's best lr and its mean ± std there.
    best = {m: (v['best_lr'], v['held_out_loss'][f'{v["best_lr"]:g}']) for m, v in ref['methods'].items()}
    assert best == {'wesar': (1e-3, {'mean': 4.1429, 'std': 0.0521, 'n': 3}),
                    'wesar_auto': (3e-2, {'mean': 4.1256, 'std': 0.0626, 'n': 3}),
                    'small': (1e-2, {'mean': 4.374, 'std': 0.1456, 'n': 3})}
    for method, v in ref['methods'].items():  # the best lr is the lowest mean among the swept ones
        assert f'{v["best_lr"]:g}' == min(v['held_out_loss'], key=lambda lr: v['held_out_loss'][lr]['mean']), method


def test_the_reference_was_measured_at_the_default_demos_shape():
    # Otherwise the default demo would run at lrs found for another model, and print no reference line.
    defaults = asdict(DemoConfig())
    assert load_reference()['shape'] == {k: defaults[k] for k in SHAPE_KEYS}


def test_the_default_demo_runs_each_method_at_its_own_best_lr_from_the_reference():
    cfg = DemoConfig(methods=['wesar', 'small', 'wesar_auto', 'he', 'weight_norm', 'sigma_reparam', 'residual_scaling'])
    assert cfg.lrs is None
    assert method_lrs(cfg, load_reference()) == {
        'wesar': [1e-3], 'small': [1e-2], 'wesar_auto': [3e-2],
        # not in the sweep: the fallback, which the report names
        'he': [FALLBACK_LR], 'weight_norm': [FALLBACK_LR], 'sigma_reparam': [FALLBACK_LR], 'residual_scaling': [FALLBACK_LR]}
    assert FALLBACK_LR == 1e-3


def test_lr_or_lrs_run_every_method_at_the_same_lrs():
    ref = load_reference()
    assert method_lrs(DemoConfig(lrs=[3e-3]), ref) == {'wesar': [3e-3], 'small': [3e-3]}
    assert method_lrs(DemoConfig(lrs=[1e-3, 1e-2], methods=['small', 'he']), ref) == {'small': [1e-3, 1e-2],
                                                                                      'he': [1e-3, 1e-2]}
