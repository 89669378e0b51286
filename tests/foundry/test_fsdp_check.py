"""The WeSaR-family models refuse Composer's FSDP1 before it wraps them, in one process: a real
Composer ``Trainer`` given the ``fsdp_config`` dict llm-foundry passes, for each of the three models.
The same over two ranks through llm-foundry's ``train()``: ``tests/distributed/test_fsdp1_refused.py``."""

from __future__ import annotations

import logging

import pytest
import torch
from composer import Trainer

from tests.foundry.mpt.helpers import build as build_mpt
from tests.helpers import build_hf, build_model
from wesar_foundry.foundry.fsdp_check import ALLOW_FSDP1_ENV

MODELS = {'wesar_llama': build_model, 'wesar_hf': lambda: build_hf('gpt_neox'), 'wesar_mpt': build_mpt}
# The paper YAMLs' fsdp_config, as llm-foundry hands it to the Trainer: a plain dict.
FSDP_CONFIG = {'sharding_strategy': 'FULL_SHARD', 'state_dict_type': 'sharded'}

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason='on a GPU, the opt-in test would run FSDP1')


@pytest.fixture(autouse=True)
def _bare_environment(monkeypatch):
    """As a launch without ``FSDP_VERSION=2``: Composer's Trainer then takes FSDP1."""
    monkeypatch.delenv('FSDP_VERSION', raising=False)
    monkeypatch.delenv(ALLOW_FSDP1_ENV, raising=False)


def trainer(model, fsdp: dict | None) -> Trainer:
    return Trainer(model=model, parallelism_config={'fsdp': fsdp} if fsdp is not None else None,
                   max_duration='1ba', device='cpu', progress_bar=False, log_to_console=False)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_fsdp1_is_refused_with_the_fix_before_composer_wraps(name):
    with pytest.raises(ValueError) as refused:
        trainer(MODELS[name](), FSDP_CONFIG)
    message = str(refused.value)
    assert message.startswith(f'{name}: Composer is about to wrap this model with FSDP1')
    assert 'FSDP_VERSION=2' in message and "env_variables: {FSDP_VERSION: '2'}" in message
    assert f'{ALLOW_FSDP1_ENV}=1' in message
    # Refused at the hand-over, before Composer's FSDP1 wrap (which, on CPU, would stop on CUDA).
    assert 'prepare_fsdp_module' not in ''.join(str(f) for f in refused.traceback)


def test_without_fsdp_config_ddp_or_one_process_is_not_refused():
    # llm-foundry drops fsdp_config at world size 1: the Trainer gets none, as with DDP.
    built = trainer(build_model(), None)
    assert built.state.fsdp_config_version == 0 and built.state.model.logger is built.logger


def test_fsdp2_is_not_refused(monkeypatch):
    from composer.utils.parallelism import FSDP2Config
    monkeypatch.setenv('FSDP_VERSION', '2')
    model = build_model()
    built = trainer(model, FSDP_CONFIG)
    assert isinstance(built.state.fsdp_config, FSDP2Config) and model.logger is built.logger


def test_the_opt_in_lets_fsdp1_through_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv(ALLOW_FSDP1_ENV, '1')
    with caplog.at_level(logging.WARNING, logger='wesar_foundry.foundry.fsdp_check'):
        # Past our check, Composer's FSDP1 wrap itself needs CUDA.
        with pytest.raises(RuntimeError, match='NVIDIA driver'):
            trainer(build_model(), FSDP_CONFIG)
    assert any(f'{ALLOW_FSDP1_ENV}=1: training wesar_llama with FSDP1' in r.getMessage() for r in caplog.records)


def test_the_logger_is_still_shared_not_copied_by_deepcopy():
    import copy
    model = build_model()
    built = trainer(model, None)
    assert copy.deepcopy(model).logger is built.logger
