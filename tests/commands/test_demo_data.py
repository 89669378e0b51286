"""The demo keeps its own prepared data in ``<out>/data``: ``wesar-foundry prepare``'s default
``wesar-data`` (the full corpus, for training elsewhere) never clashes with it, in either order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wesar_foundry.commands.cli import build_parser, main
from wesar_foundry.commands.demo import DemoConfig, run_demo

# The demo shrunk to seconds (as test_demo.py does), otherwise its defaults: default methods and lrs.
SHRUNK = dict(vocab_size=512, seq_len=32, max_chars=200_000, d_model=32, n_layers=2, n_heads=2, batch_size=8, steps=2,
              warmup=1, ratio_interval=1)


def test_the_demos_data_defaults_to_a_folder_inside_its_report():
    assert DemoConfig().data_dir() == Path('wesar-report/data')
    assert DemoConfig(out='elsewhere/report').data_dir() == Path('elsewhere/report/data')
    assert DemoConfig(out='elsewhere/report', data='mine').data_dir() == Path('mine')
    demo = build_parser().parse_args(['demo'])
    assert demo.data is None and demo.out == 'wesar-report' and demo.lr is None and demo.lrs is None
    assert build_parser().parse_args(['prepare']).out == 'wesar-data'  # not the demo's


@pytest.mark.slow
def test_demo_then_prepare_then_demo_again_in_one_folder(capfd):
    # The README's order, in a fresh folder (each test runs in its own): the demo, then `prepare`'s
    # default output, then the demo again, which reuses its own data.
    run_demo(DemoConfig(**SHRUNK))
    said = capfd.readouterr()
    demo_data = Path('wesar-report/data')
    assert (demo_data / 'prepare.json').is_file() and not Path('wesar-data').exists()
    assert ('data: wesar-report/data (docstrings, capped at 200,000 characters; the demo\'s own, inside --out). '
            '`wesar-foundry prepare --out wesar-data` builds the full, uncapped corpus for training separately.') in said.out
    built = (demo_data / 'prepare.json').stat().st_mtime_ns

    assert main(['prepare', '--out', 'wesar-data', '--max-chars', '150000', '--vocab-size', '512', '--seq-len', '32']) == 0
    assert json.loads(Path('wesar-data/prepare.json').read_text())['config']['max_chars'] == 150_000
    capfd.readouterr()

    md = run_demo(DemoConfig(**SHRUNK))
    assert 'reusing wesar-report/data (same config' in capfd.readouterr().err
    assert (demo_data / 'prepare.json').stat().st_mtime_ns == built
    # The default path end to end: each method at its own best lr from the reference (another
    # shape here, which the report says), one Figure 1 overlaying both.
    runs = json.loads(Path('wesar-report/runs.json').read_text())
    assert runs['lrs'] == {'wesar': [1e-3], 'small': [1e-2]}
    assert sorted((r['method'], r['lr']) for r in runs['runs']) == [('small', 1e-2), ('wesar', 1e-3)]
    assert all(r['val_loss'] > 0 for r in runs['runs'])
    summary = Path('wesar-report/summary.md').read_text()
    assert 'each method at its own best lr from the shipped sweep (wesar 0.001, small 0.01;' in summary
    assert 'The shipped sweep was run at another shape (d_model 32 here, 128 there;' in summary
    assert '| wesar | 0.001 | 1 |' in md and '| small | 0.01 | 1 |' in md and md in summary
    assert Path('wesar-report/figure1.png').stat().st_size > 0 and '![figure1](figure1.png)' in summary
    assert not list(Path('wesar-report').glob('figure1-lr*'))
