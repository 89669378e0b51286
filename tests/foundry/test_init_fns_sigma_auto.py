"""``init_config.sigma2: auto`` through llm-foundry's ``train()``: the lr reaches the model by
interpolation, the choice is logged and saved, a resume keeps the checkpoint's gate constant, and
the export is a stock Llama with the trained logits."""

from __future__ import annotations

import math

import pytest
import torch
from llmfoundry.command_utils import train

from tests.conftest import tiny_train_cfg
from tests.helpers import batch, losses
from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.commands.cli import main as cli

# Every test here trains, or reads a training run.
pytestmark = pytest.mark.slow

AUTO = {'init_config': {'name': 'wesar_', 'sigma2': 'auto', 'lr': '${optimizer.lr}'}}


def gate_scales(trainer) -> set[float]:
    return {float(f'{b.item():.6g}') for n, b in trainer.state.model.named_buffers() if n.endswith('.gate_scale')}  # fp32


@pytest.fixture(scope='module')
def run(tmp_path_factory, tiny_data):
    """6 steps at lr 1e-2 with sigma2: auto, monolithic checkpoints at steps 3 and 6."""
    ck = tmp_path_factory.mktemp('auto') / 'ck'
    trainer = train(tiny_train_cfg(tiny_data, 'sigma-auto', 'max_duration=6ba', 'optimizer.lr=1e-2', f'save_folder={ck}',
                                   'save_interval=3ba', 'callbacks={gate_health_monitor: {}}', **AUTO))
    logger = next(d for d in trainer.logger.destinations if type(d).__name__ == 'InMemoryLogger')
    model = trainer.state.model.model.eval()
    ids = batch(seq=24, seed=1)['input_ids']
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    out = {'ck': ck, 'losses': losses(trainer), 'hparams': dict(logger.hyperparameters), 'scales': gate_scales(trainer),
           'ids': ids, 'logits': logits}
    trainer.close()
    return out


def test_the_lr_reaches_the_model_and_sets_sigma_and_the_gate_scale(run):
    assert all(math.isfinite(x) for x in run['losses']) and len(run['losses']) == 6
    assert run['scales'] == {0.01}  # (1e-3 / 1e-2)²
    h = run['hparams']
    assert h['wesar/lr'] == 1e-2 and h['wesar/sigma2'] == pytest.approx(4e-3) and h['wesar/gate_scale'] == pytest.approx(0.01)


def test_the_checkpoint_holds_the_choice_and_the_gate_scales(run):
    ck = torch.load(next(run['ck'].glob('*ba6-rank0.pt')), weights_only=False)
    scales = {k: v for k, v in ck['state']['model'].items() if k.endswith('.gate_scale')}
    assert len(scales) == sum(k.endswith('.alpha') for k in ck['state']['model']) > 0
    assert all(v.item() == pytest.approx(0.01) for v in scales.values())
    config = ck['state']['integrations']['huggingface']['model']['config']['content']
    assert config['sigma_choice']['lr'] == 1e-2 and config['sigma_choice']['sigma2'] == pytest.approx(4e-3)


@pytest.mark.parametrize('lr', ['1e-2', '3e-3'])
def test_a_resume_continues_with_the_checkpoints_gate_scale_whatever_the_new_lr(run, train_cfg, lr):
    """At the same lr the resumed run repeats the uninterrupted one. At another lr, sigma2: auto
    would pick another s; the checkpoint's a was trained with its own s, so that s is restored with
    it and the function is continuous (the first resumed loss is computed before any new step)."""
    [mid] = run['ck'].glob('*ba3-rank0.pt')
    trainer = train(train_cfg('max_duration=6ba', f'optimizer.lr={lr}', f'load_path={mid}', **AUTO))
    resumed = losses(trainer)
    assert gate_scales(trainer) == {0.01}
    assert resumed[0] == pytest.approx(run['losses'][3], rel=1e-5)
    if lr == '1e-2':
        assert resumed == pytest.approx(run['losses'][3:], rel=1e-5)
    trainer.close()


def test_the_export_is_a_stock_llama_with_the_trained_logits(run, tmp_path):
    [last] = run['ck'].glob('*ba6-rank0.pt')
    assert cli(['export', str(last), str(tmp_path / 'hf')]) == 0
    loaded = load_with_stock_transformers({'auto': tmp_path / 'hf'}, run['ids'], tmp_path / 'loader', generate=False)
    assert loaded['auto']['class'] == 'LlamaForCausalLM'
    torch.testing.assert_close(loaded['auto']['logits'], run['logits'], atol=1e-5, rtol=0)
