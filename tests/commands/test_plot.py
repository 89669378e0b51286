"""Figure 1 from logged metrics: real tiny runs through the jsonl logger, and W&B / MLflow / file-logger exports."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest
from llmfoundry.command_utils import train

import tests.foundry.callbacks.helpers  # noqa: F401 (registers test_lr_jump)
from wesar_foundry.commands.cli import main
from wesar_foundry.commands.plot import loss_series, plot_runs, read_metrics, resolve_matrices


def _run(train_cfg, tmp_path, name: str, jump: bool, **model) -> str:
    path = tmp_path / name / 'metrics.jsonl'
    cbs = ("{update_ratio_monitor: {interval: 2}, "
           "loss_spike_monitor: {window: 6, warmup: 6, k: 6.0, min_rise: 0.15}"
           + (", test_lr_jump: {match: 'lm_head\\.weight$', step: 10, factor: 1000.0}" if jump else '') + '}')
    groups = (r"optimizer.param_groups=[{param_str_match: '\.(alpha|g|gamma|row_mult|col_mult)$', weight_decay: 0.0}, "
              r"{param_str_match: 'lm_head\.weight$'}]")
    train(train_cfg('max_duration=14ba', f'run_name={name}', groups, f'callbacks={cbs}',
                    f'loggers={{jsonl: {{path: {path}}}}}', **model))
    return str(path)


def test_plot_command_draws_figure_1_overlaying_two_real_runs(train_cfg, tmp_path):
    wesar = _run(train_cfg, tmp_path, 'wesar', jump=True)
    small = _run(train_cfg, tmp_path, 'small', jump=False, reparam='none',
                 init_config={'name': 'small', 'sigma2': 4e-5})
    run = read_metrics(wesar)
    assert run.name == 'wesar'
    assert run.series['loss_spike/loss'][0][0] == 11  # the jump at step 10 shows in step 11's loss
    key, loss = loss_series(run)
    assert key == 'loss/train/total' and loss[0][0] == 1 and len(loss) == 14  # steps 1..14
    chosen = resolve_matrices(run, ['last:down', 'last:up'], 'effective')
    assert list(chosen.values()) == ['update_ratio/effective/matrix/model.model.layers.1.mlp.down_proj',
                                     'update_ratio/effective/matrix/model.model.layers.1.mlp.up_proj']
    assert [s for s, _ in run.series[chosen['W_down (layer 1)']]] == list(range(2, 15, 2))

    out = tmp_path / 'fig' / 'figure1.png'
    assert main(['plot', wesar, small, '--label', 'WeSaR', '--label', 'Small init', '--out', str(out)]) == 0
    image = mpimg.imread(out)
    assert image.shape[0] > 600 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # not blank
    svg = out.with_suffix('.svg').read_text()
    for text in ('WeSaR', 'Small init', '1 spikes', 'W_down (layer 1)', 'W_up (layer 1)'):
        assert text in svg or text.replace(' ', '') in svg.replace(' ', ''), text


def test_wandb_and_mlflow_csv_exports_and_the_composer_file_logger_are_read(tmp_path):
    wandb = tmp_path / 'wandb.csv'
    wandb.write_text('Step,"run-a - loss/train/total","run-a - loss/train/total__MIN",'
                     '"run-a - update_ratio/raw/matrix/model.layers.3.mlp.down_proj.weight"\n'
                     '1,5.0,4.9,0.1\n2,4.5,4.4,\n3,4.0,3.9,0.05\n')
    run = read_metrics(wandb)
    assert run.name == 'run-a'
    assert run.series['loss/train/total'] == [(1, 5.0), (2, 4.5), (3, 4.0)]
    assert run.series['update_ratio/raw/matrix/model.layers.3.mlp.down_proj.weight'] == [(1, 0.1), (3, 0.05)]
    assert not any(k.endswith('__MIN') for k in run.series)

    mlflow = tmp_path / 'mlflow.csv'
    mlflow.write_text('key,value,step,timestamp\nloss/train/total,5.0,0,1\nloss/train/total,4.0,1,2\n'
                      'update_ratio/effective/matrix/model.layers.0.mlp.up_proj,0.2,1,2\n')
    run = read_metrics(mlflow)
    assert run.series['loss/train/total'] == [(0, 5.0), (1, 4.0)]
    assert resolve_matrices(run, ['last:up'], 'effective') == {
        'W_up (layer 0)': 'update_ratio/effective/matrix/model.layers.0.mlp.up_proj'}

    text = tmp_path / 'log.txt'
    text.write_text('[hyperparameter]: seed: 1 \n[metric][batch=3]: loss/train/total: 4.2 \n'
                    '[metric][batch=4]: update_ratio/raw/uniformity/max_over_min: 2.5 \n')
    run = read_metrics(text)
    assert run.series == {'loss/train/total': [(3, 4.2)], 'update_ratio/raw/uniformity/max_over_min': [(4, 2.5)]}
    paths = plot_runs([wandb, mlflow, text], out=tmp_path / 'mixed.svg')
    assert [p.suffix for p in paths] == ['.png', '.svg'] and all(p.stat().st_size > 1000 for p in paths)


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert main(['plot', str(tmp_path / 'missing.jsonl')]) == 2
    assert 'metrics file not found' in capsys.readouterr().err
    bad = tmp_path / 'bad.csv'
    bad.write_text('a,b\n1,2\n')
    with pytest.raises(ValueError, match='no step column'):
        read_metrics(bad)
    good = tmp_path / 'm.jsonl'
    good.write_text(json.dumps({'step': 1, 'loss/train/total': 3.0}) + '\n')
    with pytest.raises(ValueError, match='2 labels for 1 metrics files'):
        plot_runs([good], labels=['a', 'b'], out=tmp_path / 'x.png')
    with pytest.raises(ValueError, match="kind='eff'; allowed: auto, effective, raw"):
        plot_runs([good], kind='eff', out=tmp_path / 'x.png')
