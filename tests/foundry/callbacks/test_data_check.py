"""``wesar_data_check`` stops a run whose prepared folder lacks a split before any compute."""

from __future__ import annotations

import pytest
from llmfoundry.command_utils import train

from wesar_foundry.foundry.callbacks.data_check import PreparedDataCheck
from wesar_foundry.reparam import ReparamMatrix


def test_a_train_only_folder_as_eval_data_fails_naming_the_split_and_the_option(train_cfg, tiny_data, tmp_path,
                                                                                monkeypatch):
    from wesar_foundry.data import PrepareConfig, prepare
    train_only = prepare(PrepareConfig(out=str(tmp_path / 'train-only'), tokenizer=str(tiny_data / 'tokenizer'),
                                       seq_len=32, val_percent=0, max_chars=100_000))
    cfg = train_cfg('callbacks={wesar_data_check: {}}')
    cfg.eval_loader.dataset.local = str(train_only)
    built = []
    monkeypatch.setattr(ReparamMatrix, '__init__', lambda *a, **k: built.append(1) or None)
    with pytest.raises(ValueError, match=r"eval_loader: .*has no val/index.json: it was prepared with --val-percent 0"):
        train(cfg)
    assert not built  # before the model (and any dataloader) was built


def test_it_takes_no_options_and_refuses_one_by_name_as_a_stock_callback_does():
    with pytest.raises(TypeError, match="unexpected keyword argument 'interval'"):
        PreparedDataCheck(train_config={}, interval=3)
