"""``wesar-foundry demo`` end to end at toy size: runs, report folder, table, plots."""

from __future__ import annotations

import json
import re

import pytest

from wesar_foundry.commands.cli import main
from wesar_foundry.commands.demo import DemoConfig, run_demo
from wesar_foundry.commands.plot import read_metrics


@pytest.mark.slow
def test_demo_trains_both_methods_and_writes_the_report(tiny_data, tmp_path, capfd):
    cfg = DemoConfig(out=str(tmp_path / 'report'), data=str(tiny_data), vocab_size=512, seq_len=32, max_chars=200_000,
                     d_model=32, n_layers=2, n_heads=2, batch_size=8, steps=6, warmup=2, ratio_interval=2,
                     lrs=[1e-3, 3e-3])
    md = run_demo(cfg)
    report = tmp_path / 'report'
    runs = json.loads((report / 'runs.json').read_text())['runs']
    assert sorted((r['method'], r['lr']) for r in runs) == [('small', 1e-3), ('small', 3e-3), ('wesar', 1e-3), ('wesar', 3e-3)]
    for r in runs:
        assert r['val_loss'] > 0 and r['train_loss'] > 0 and r['spikes'] == 0 and r['spread_median'] >= 1
        # gate_health_monitor ran on every measured step and found nothing (bench/gate_health.py: the
        # full-size demo is silent too).
        warnings = read_metrics(r['metrics']).series['gate_health/warnings']
        assert [s for s, _ in warnings] == [2, 4, 6] and {v for _, v in warnings} == {0}
    # WeSaR's update ratios are more uniform than Small init's from the first steps (the paper's motivation).
    spread = {r['method']: r['spread_median'] for r in runs if r['lr'] == 1e-3}
    assert spread['wesar'] < spread['small']
    for name in ('figure1-lr1e-03.png', 'figure1-lr3e-03.png', 'lr-sweep.png', 'summary.md'):
        assert (report / name).stat().st_size > 0, name
    summary = (report / 'summary.md').read_text()
    assert '| wesar | 0.001 | 1 |' in md and md in summary
    # --lrs: one lr for all methods, said above the table (the shipped sweep is for another shape).
    said = "**Comparison:** all methods at the same lrs (0.001, 0.003): a method's best lr differs"
    assert summary.index(said) < summary.index(md) and 'The shipped reference sweep is for another shape' in summary
    out = capfd.readouterr().out
    assert "| wesar | 0.001 |" in out and said in out


def test_demo_refuses_unknown_methods_before_building_anything(tmp_path, capsys):
    assert main(['demo', '--out', str(tmp_path / 'r'), '--data', str(tmp_path / 'd'), '--methods', 'wesar,adam']) == 2
    assert 'allowed: small, he, weight_norm, sigma_reparam, residual_scaling, wesar' in capsys.readouterr().err
    assert not (tmp_path / 'd').exists() and not (tmp_path / 'r').exists()


@pytest.mark.parametrize('args, message', [(['--steps', '0'], 'demo --steps must be >= 1'),
                                           (['--lr', '0'], r'demo --lr/--lrs \[0.0\]: each learning rate must be a number in \(0, 1\)'),
                                           (['--lrs', '1e-3,0'], r'demo --lr/--lrs \[0.001, 0.0\]')])
def test_demo_refuses_zero_steps_or_learning_rates_instead_of_using_defaults(tmp_path, capsys, args, message):
    assert main(['demo', '--out', str(tmp_path / 'r'), '--data', str(tmp_path / 'd'), *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / 'd').exists() and not (tmp_path / 'r').exists()
