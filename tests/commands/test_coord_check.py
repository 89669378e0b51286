"""``wesar-foundry coord-check`` end to end: the real ``train()`` at tiny widths, for ``wesar_llama`` and a
``wesar_hf`` family, and what the numbers say about WeSaR's first step against Small init's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from wesar_foundry.commands.cli import main
from wesar_foundry.core.coords import RULE

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'yamls' / 'tiny'
WIDTHS = (32, 64, 128)  # head dim 16 (the tiny test model's d 32 / 2 heads)
LR, SIGMA2 = 1e-3, 4e-5  # the tiny YAML's lr and σ²
LLAMA_GELU_ROLES = ['emb', 'q', 'k', 'v', 'o', 'up', 'down', 'head']
LLAMA_SWIGLU_ROLES = ['emb', 'q', 'k', 'v', 'o', 'up', 'gate', 'down', 'head']

pytestmark = pytest.mark.slow


def _data(tiny_data: Path) -> list[str]:
    return [f'variables.data_local={tiny_data}', 'variables.max_seq_len=32', 'global_train_batch_size=8',
            'device_train_batch_size=8', 'device_train_microbatch_size=8']


def _check(out: Path, options: list[str], yaml: str, overrides: list[str]) -> dict:
    assert main(['coord-check', '--out', str(out), *options, str(TINY / yaml), *overrides]) == 0
    return json.loads((out / 'coords.json').read_text())


@pytest.fixture(scope='module')
def llama_checks(tiny_data, tmp_path_factory):
    """The tiny wesar_llama YAML at three widths, 3 steps, for WeSaR and for Small init (one process, real train())."""
    root = tmp_path_factory.mktemp('coord')
    tiny = [*_data(tiny_data), 'model.vocab_size=512', 'model.n_layers=2']
    widths = ','.join(map(str, WIDTHS))
    out = {}
    for method, overrides in {'wesar': [], 'small': ['model.reparam=none', 'model.init_config.name=small',
                                                                'model.init_config.target=small']}.items():
        assert main(['coord-check', '--widths', widths, '--steps', '3', '--out', str(root / method),
                     str(TINY / 'wesar.yaml'), *tiny, *overrides]) == 0
        out[method] = root / method
    return out


def _result(folder: Path) -> dict:
    return json.loads((folder / 'coords.json').read_text())


def _slope(result: dict, quantity: str, which: str, role: str) -> dict:
    return next(e for e in result['drift'] if (e['quantity'], e['which'], e['role'], e['axis'])
                == (quantity, which, role, 'width'))


def test_the_check_writes_every_number_with_its_config_the_rule_and_the_figures(llama_checks):
    folder = llama_checks['wesar']
    result = _result(folder)
    assert [(r['width'], r['depth'], r['steps']) for r in result['runs']] == [(w, 2, [1, 2, 3]) for w in WIDTHS]
    assert result['options']['widths'] == list(WIDTHS) and result['options']['tol'] == 0.25
    assert result['rule'] == f'{RULE}; tol = 0.25'
    for run in result['runs']:
        assert run['config']['model']['d_model'] == run['width'] and run['config']['max_duration'] == '3ba'
        assert run['seconds'] > 0 and len(run['loss']) == 3 and all(math.isfinite(x) for x in run['loss'])
    for quantity in ('update_ratio', 'activation_rms'):
        for suffix in ('.png', '.svg'):
            path = folder / f'coords-{quantity}{suffix}'
            assert path.stat().st_size > 5000, path
    assert not list(folder.glob('.*'))  # no temporary file left behind


def test_every_role_of_the_model_has_an_update_ratio_and_an_activation_rms_at_every_step(llama_checks):
    for folder in llama_checks.values():
        for run in _result(folder)['runs']:
            assert run['roles'] == LLAMA_GELU_ROLES
            assert sorted(set(run['matrices'].values())) == sorted(LLAMA_GELU_ROLES)
            assert len(run['matrices']) == 2 + 6 * 2  # emb, head, and six per layer
            for quantity in ('update_ratio', 'update_ratio_raw', 'activation_rms'):
                assert list(run[quantity]) == LLAMA_GELU_ROLES
                assert all(len(v) == 3 and all(x > 0 and math.isfinite(x) for x in v) for v in run[quantity].values())


def test_the_table_names_each_role_and_the_roles_that_drift(llama_checks, capsys):
    result = _result(llama_checks['small'])
    lines = result['table'].splitlines()
    assert lines[0] == 'slope of ln(value) against ln(width) at depth 2; * = |slope| > 0.25 (drifts)'
    assert [line.split(' | ')[0].lstrip('| ') for line in lines[3:3 + len(LLAMA_GELU_ROLES)]] == LLAMA_GELU_ROLES
    drifting = [e['role'] for e in result['drift'] if e['quantity'] == 'update_ratio' and e['which'] == 'first'
                and e['axis'] == 'width' and e['flagged']]
    assert drifting  # Small init's first steps grow with width (next test)
    assert f'update ratio ‖ΔW̄‖/‖W̄‖ (effective matrices), step 1: drifts with width: {", ".join(drifting)}' in [
        line.strip() for line in lines]


def test_wesar_first_step_moves_every_stored_matrix_by_lr_over_sigma_at_every_width(llama_checks):
    # Adam's first step is lr·sign(g) per element, and WeSaR stores every matrix as N(0, σ²): the raw ratio
    # of every linear matrix is lr/σ whatever its role and width. The embedding moves less: only the rows
    # of tokens in the batch get a gradient.
    result = _result(llama_checks['wesar'])
    expected = LR / math.sqrt(SIGMA2)
    for run in result['runs']:
        first = {role: v[0] for role, v in run['update_ratio_raw'].items()}
        for role in LLAMA_GELU_ROLES[1:]:
            assert first[role] == pytest.approx(expected, rel=0.03), (run['width'], role)
        assert first['emb'] < 0.9 * expected
    for role in LLAMA_GELU_ROLES:
        assert abs(_slope(result, 'update_ratio_raw', 'first', role)['slope']) < 0.05


def test_small_init_first_step_differs_across_roles_and_grows_with_width(llama_checks):
    # Small init stores std √(2/(5d)), and /√(2N) on W_o and W_d: their first-step ratios are √(2N) = 2 times
    # the others', and every ratio grows as √d.
    result = _result(llama_checks['small'])
    for run in result['runs']:
        first = {role: v[0] for role, v in run['update_ratio_raw'].items()}
        expected = LR / math.sqrt(2 / (5 * run['width']))
        for role in ('q', 'k', 'v', 'up', 'head'):
            assert first[role] == pytest.approx(expected, rel=0.03), (run['width'], role)
        for role in ('o', 'down'):
            assert first[role] == pytest.approx(2 * expected, rel=0.03), (run['width'], role)
    for role in ('q', 'k', 'v', 'o', 'up', 'down', 'head'):
        slope = _slope(result, 'update_ratio', 'first', role)
        assert slope['slope'] == pytest.approx(0.5, abs=0.05) and slope['status'] == 'drifts'


def test_a_wesar_hf_llama_checks_over_widths_and_depths(tiny_data, tmp_path, capsys):
    sizes = ['model.config_overrides.hidden_size=32', 'model.config_overrides.num_attention_heads=2',
             'model.config_overrides.num_key_value_heads=2', 'model.config_overrides.intermediate_size=64',
             'model.config_overrides.vocab_size=512']
    result = _check(tmp_path / 'hf', ['--widths', '32,64', '--depths', '1,2', '--steps', '2'], 'hf_llama.yaml',
                    [*_data(tiny_data), *sizes])
    runs = result['runs']
    assert [(r['width'], r['depth']) for r in runs] == [(32, 1), (64, 1), (32, 2), (64, 2)]
    overrides = [r['config']['model']['config_overrides'] for r in runs]
    assert [(o['hidden_size'], o['num_attention_heads'], o['num_key_value_heads'], o['intermediate_size'],
             o['num_hidden_layers']) for o in overrides] == [(32, 2, 2, 64, 1), (64, 4, 4, 128, 1),
                                                              (32, 2, 2, 64, 2), (64, 4, 4, 128, 2)]
    for run in runs:
        assert run['roles'] == LLAMA_SWIGLU_ROLES
        assert len(run['matrices']) == 2 + 7 * run['depth']
        for quantity in ('update_ratio', 'activation_rms'):
            assert all(x > 0 and math.isfinite(x) for v in run[quantity].values() for x in v)
    axes = {(e['axis'], e.get('depth'), e.get('width')) for e in result['drift']}
    assert axes == {('width', 1, None), ('width', 2, None), ('depth', None, 32), ('depth', None, 64)}
    printed = capsys.readouterr().out
    assert '[coord-check] run 4/4: width 64, depth 2, 2 steps' in printed
    assert 'slope of ln(value) against ln(depth) at width 64' in printed
