"""The model's σ line reaches a run's log at the YAML's ``python_log_level`` (llm-foundry's default
``debug`` when the key is absent), as llm-foundry's own lines do, and not above it."""

from __future__ import annotations

import logging

import pytest
from llmfoundry.command_utils import train

from wesar_foundry.foundry.log_level import PACKAGE_LOGGER, follow_llmfoundry

MODEL_LOGGER = 'wesar_foundry.foundry.composer_models'


@pytest.fixture(autouse=True)
def levels(monkeypatch):
    """The package's and llm-foundry's logger levels restored after each test, and what
    ``follow_llmfoundry`` last set with them (else a restored level reads as the user's)."""
    from wesar_foundry.foundry import log_level
    monkeypatch.setattr(log_level, '_followed', log_level._followed)
    saved = {name: logging.getLogger(name).level for name in (PACKAGE_LOGGER, 'llmfoundry')}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def lines():
    """The model builder's log lines as the run's handlers would get them: a handler on its logger
    (train() replaces the root logger's handlers), which sees only the records the level lets through."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger(MODEL_LOGGER)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def sigma_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith('wesar-foundry WeSaRLlamaComposerModel: ')]


@pytest.mark.slow
def test_the_sigma_line_is_logged_at_the_shipped_yamls_level(train_cfg, lines):
    cfg = train_cfg('max_duration=1ba')
    assert cfg.python_log_level == 'info'  # as shipped
    train(cfg).close()
    assert sigma_lines(lines) == ['wesar-foundry WeSaRLlamaComposerModel: reparam wesar, he target; '
                                  'sigma2=4e-05 (sigma=0.006325), gate_scale=1']


@pytest.mark.slow
def test_without_python_log_level_llmfoundrys_default_debug_shows_it(train_cfg, lines):
    cfg = train_cfg('max_duration=1ba', init_config={'name': 'wesar_', 'sigma2': 'auto', 'lr': '${optimizer.lr}'})
    del cfg['python_log_level']
    train(cfg).close()
    assert logging.getLogger(PACKAGE_LOGGER).level == logging.DEBUG
    (line,) = sigma_lines(lines)
    assert 'reparam wesar, he target; sigma2: auto for lr 0.001 -> sigma2=4e-05' in line


@pytest.mark.slow
def test_at_python_log_level_warning_it_is_not_shown(train_cfg, lines):
    train(train_cfg('max_duration=1ba', 'python_log_level=warning')).close()
    assert sigma_lines(lines) == []


def test_a_level_the_user_set_on_the_package_logger_is_kept():
    logging.getLogger('llmfoundry').setLevel(logging.INFO)
    follow_llmfoundry()
    assert logging.getLogger(PACKAGE_LOGGER).level == logging.INFO
    logging.getLogger('llmfoundry').setLevel(logging.WARNING)  # the next run's level: followed
    follow_llmfoundry()
    assert logging.getLogger(PACKAGE_LOGGER).level == logging.WARNING
    logging.getLogger(PACKAGE_LOGGER).setLevel(logging.ERROR)  # the user's: kept
    logging.getLogger('llmfoundry').setLevel(logging.DEBUG)
    follow_llmfoundry()
    assert logging.getLogger(PACKAGE_LOGGER).level == logging.ERROR
