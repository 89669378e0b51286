"""Every training YAML we ship (tiny, pretrain, and the ``parameters`` of each MosaicML job) carries
the monitors and the metrics file the documentation promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wesar_foundry.commands.tiny import tiny_yamls

ROOT = Path(__file__).resolve().parents[2]
MONITORS = {'wesar_data_check', 'update_ratio_monitor', 'loss_spike_monitor', 'gate_health_monitor'}


def shipped_train_configs() -> dict[str, dict]:
    """relative path → the train config (a job file's ``parameters``), read as plain YAML."""
    configs = {f'tiny/{p.name}': yaml.safe_load(p.read_text()) for p in tiny_yamls()}
    for path in sorted((ROOT / 'yamls' / 'pretrain').rglob('*.yaml')):
        configs[path.relative_to(ROOT / 'yamls').as_posix()] = yaml.safe_load(path.read_text())
    for path in sorted((ROOT / 'yamls' / 'mcloud').glob('*.yaml')):
        configs[path.relative_to(ROOT / 'yamls').as_posix()] = yaml.safe_load(path.read_text())['parameters']
    return configs


CONFIGS = shipped_train_configs()


def test_every_kind_of_shipped_yaml_is_checked():
    kinds = {rel.split('/')[0] for rel in CONFIGS}
    assert kinds == {'tiny', 'pretrain', 'mcloud'} and len(CONFIGS) > 3 * 8


@pytest.mark.parametrize('rel', sorted(CONFIGS))
def test_every_shipped_training_yaml_has_the_monitors_and_the_jsonl_logger(rel):
    cfg = CONFIGS[rel]
    assert MONITORS - set(cfg['callbacks']) == set(), rel
    assert 'jsonl' in cfg['loggers'], rel
