"""llm-foundry's own ``train()`` runs the shipped tiny YAML on CPU with our model."""

from __future__ import annotations

import math

import pytest
from llmfoundry.command_utils import train

from tests.helpers import INITS, losses
from wesar_foundry.core.init_targets import target_std
from wesar_foundry.reparam import ReparamMatrix

# Every test here runs llm-foundry's train().
pytestmark = pytest.mark.slow


def test_tiny_yaml_trains_loss_falls_and_gates_move(train_cfg):
    cfg = train_cfg('max_duration=30ba', 'optimizer.lr=3e-3')
    trainer = train(cfg)
    hist = losses(trainer)
    assert len(hist) == 30 and all(math.isfinite(x) for x in hist)
    assert sum(hist[-5:]) / 5 < sum(hist[:5]) / 5 - 0.3  # falls by more than noise
    logger = next(d for d in trainer.logger.destinations if type(d).__name__ == 'InMemoryLogger')
    assert 'loss/train/ce' in logger.data and 'loss/train/z_loss' in logger.data
    model = trainer.state.model.model
    sigma = math.sqrt(4e-5)
    moved = []
    mats = model.reparam_modules()
    assert mats
    for name, m in mats.items():
        fan_in = m.in_features if m.kind == 'linear' else None
        init = target_std(m.role, 'he', 32, 2, fan_in) / sigma
        assert m.alpha.grad is not None or m.alpha.item() != init, name
        moved.append(abs(m.alpha.item() - init) > 1e-6)
    assert all(moved)


def test_gates_are_kept_out_of_weight_decay(train_cfg):
    trainer = train(train_cfg('max_duration=1ba'))
    groups = trainer.state.optimizers[0].param_groups
    model = trainer.state.model
    gates = {id(p) for n, p in model.named_parameters() if n.endswith('.alpha')}
    assert groups and gates
    for g in groups:
        ids = {id(p) for p in g['params']}
        if ids & gates:
            assert ids <= gates and g['weight_decay'] == 0.0
        else:
            assert g['weight_decay'] > 0
    assert sum(len(g['params']) for g in groups if g['weight_decay'] == 0.0) == len(gates)


def test_missing_data_path_fails_before_the_model_is_built(train_cfg, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(ReparamMatrix, '__init__', lambda *a, **k: built.append(1) or None)
    cfg = train_cfg()
    cfg.train_loader.dataset.local = str(tmp_path / 'nowhere')
    with pytest.raises(Exception, match='nowhere'):
        train(cfg)
    assert not built


@pytest.mark.parametrize('reparam', list(INITS))
def test_every_reparam_trains_and_resumes_to_the_same_next_loss(train_cfg, tmp_path, reparam):
    """save → load → continue gives the loss an uninterrupted run gives at the same step."""
    ck = tmp_path / 'ck'
    model = {'reparam': reparam, 'init_config': INITS[reparam]}
    full = train(train_cfg('max_duration=6ba', f'save_folder={ck}', 'save_interval=3ba', **model))
    straight = losses(full)
    assert len(straight) == 6 and all(math.isfinite(x) for x in straight)
    [mid] = ck.glob('*ba3-rank0.pt')
    resumed = losses(train(train_cfg('max_duration=6ba', f'load_path={mid}', **model)))
    assert len(resumed) == 3
    assert resumed == pytest.approx(straight[3:], rel=1e-5)
