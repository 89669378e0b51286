"""What the demo's report says it compares (above the table), with the shipped sweep's best-vs-best
line only where the run's shape is the sweep's. Written from fabricated rows: no training."""

from __future__ import annotations

from pathlib import Path

import pytest

from wesar_foundry.commands.demo import DemoConfig, comparison, load_reference, report

SOURCE = 'source: bench/sigma_auto.py, 2026-12-01, seeds 17, 18, 19, lrs 0.001 to 0.03; bench/README.md section 10'
# bench/README.md section 10: each at its best lr, mean ± std over 3 seeds.
BEST_VS_BEST = 'wesar at its best lr 0.001: 4.143 ± 0.052; small at its best lr 0.01: 4.374 ± 0.146; gap: wesar − small = -0.23 nats'


def _row(method: str, lr: float, val: float, seed: int = 17) -> dict:
    return {'method': method, 'seed': seed, 'lr': lr, 'wall_s': 100.0, 'metrics': f'runs/{method}/metrics.jsonl',
            'train_loss': val - 0.1, 'val_loss': val, 'val_ppl': 2.718 ** val, 'spikes': 0.0, 'spread_median': 1.5,
            'spread_final': 1.6}


def _summary(cfg: DemoConfig, rows: list[dict]) -> str:
    return report(cfg, load_reference(), rows, Path('wesar-report/data'), [Path('figure1.png'), Path('figure1.svg')], 240.0)


def test_the_default_report_says_each_method_ran_at_its_own_best_lr_and_where_that_came_from():
    cfg = DemoConfig()
    md = _summary(cfg, [_row('wesar', 1e-3, 4.1), _row('small', 1e-2, 4.4)])
    said = comparison(cfg, load_reference())
    assert said.startswith('**Comparison:** each method at its own best lr from the shipped sweep (wesar 0.001, '
                           f'small 0.01; {SOURCE}')
    assert f'The same comparison in the shipped sweep (held-out loss, mean ± std over 3 seeds, this shape): {BEST_VS_BEST}.' in said
    assert 'one seed' in said and 'same lr' not in said
    # Above the table, and the table says which lr each method ran at.
    assert md.index(said) < md.index('| method | lr |') < md.index('| wesar | 0.001 | 1 |') < md.index('| small | 0.01 | 1 |')
    assert '![figure1](figure1.png)' in md and 'figure1.svg' not in md
    assert "compare methods at each one's best learning rate" not in md  # the old advice, now what the run does


@pytest.mark.parametrize('lrs, head', [([1e-3], 'all methods at the same lr (0.001)'),
                                       ([1e-3, 1e-2], 'all methods at the same lrs (0.001, 0.01)')])
def test_a_shared_lr_report_says_so_and_gives_the_sweeps_fair_comparison_with_its_source(lrs, head):
    cfg = DemoConfig(lrs=lrs)
    said = comparison(cfg, load_reference())
    assert said.startswith(f'**Comparison:** {head}: a method\'s best lr differs (in the shipped sweep: wesar 0.001, '
                           'small 0.01)')
    assert f'The fair comparison from the shipped sweep (held-out loss, mean ± std over 3 seeds, this shape): ' \
           f'{BEST_VS_BEST} ({SOURCE}' in said
    md = _summary(cfg, [_row(m, lr, 4.2) for lr in lrs for m in ('wesar', 'small')])
    assert md.index(said) < md.index('| method | lr |')


@pytest.mark.parametrize('lrs', [None, [1e-3]])
@pytest.mark.parametrize('other', [{'steps': 50}, {'d_model': 64, 'n_heads': 4}, {'sources': ['notes.txt']},
                                   {'max_chars': None}, {'warmup': 20}])
def test_the_reference_line_is_only_for_the_sweeps_shape(lrs, other):
    said = comparison(DemoConfig(lrs=lrs, **other), load_reference())
    assert '4.374' not in said and 'comparison in the shipped sweep' not in said and 'fair comparison' not in said
    key = next(iter(other))
    assert 'another shape' in said and f'{key} {other[key]} here, {load_reference()["shape"][key]} there' in said
    assert '`--lrs 1e-3,3e-3,1e-2,3e-2` sweeps this shape' in said


def test_methods_the_sweep_lacks_are_named_with_the_lr_they_ran_at():
    cfg = DemoConfig(methods=['wesar_auto', 'he', 'small'], seeds=[17, 18])
    said = comparison(cfg, load_reference())
    assert 'each method at its own best lr from the shipped sweep (wesar_auto 0.03, small 0.01;' in said
    assert 'No reference lr was available for he (the sweep ran wesar, wesar_auto, small): run at 0.001.' in said
    assert 'wesar_auto at its best lr 0.03: 4.126 ± 0.063; small at its best lr 0.01: 4.374 ± 0.146; ' \
           'gap: wesar_auto − small = -0.25 nats.' in said
    assert 'one seed' not in said  # two seeds here


def test_a_shared_lr_run_of_methods_the_sweep_lacks_still_says_lrs_differ():
    said = comparison(DemoConfig(methods=['he', 'weight_norm'], lrs=[1e-3]), load_reference())
    assert "a method's best lr differs (WeSaR's gate scales its effective step)" in said
    assert 'fair comparison' not in said  # nothing swept to show
