"""The registered init functions (``wesar_``, ``he``, ``small``) refuse a stock model's plain matrices
by name instead of leaving them at PyTorch's default (or uninitialized memory under meta init)."""

from __future__ import annotations

import pytest
from torch import nn

from wesar_foundry.foundry.init_fns import he, small, wesar_


@pytest.mark.parametrize('init_name', ['wesar_', 'he', 'small'])
def test_llmfoundrys_stock_mpt_with_our_init_is_refused_naming_the_models_that_take_it(init_name):
    from llmfoundry.utils.builders import build_composer_model
    with pytest.raises(ValueError, match=r'init_config.name \(wesar_, he, small\): \w+ \(\d+, \d+\) is a plain '
                                         r'matrix .* wesar_llama, wesar_hf or wesar_mpt.*small_init_'):
        build_composer_model(name='mpt_causal_lm', tokenizer=None, init_context=None, cfg={
            'd_model': 32, 'n_heads': 2, 'n_layers': 1, 'expansion_ratio': 2, 'max_seq_len': 16, 'vocab_size': 64,
            'init_device': 'cpu', 'attn_config': {'attn_impl': 'torch'}, 'init_config': {'name': init_name}})


@pytest.mark.parametrize('fn', [wesar_, he, small])
@pytest.mark.parametrize('module', [nn.Linear(4, 4), nn.Embedding(8, 4)])
def test_every_registered_init_refuses_a_plain_matrix(fn, module):
    with pytest.raises(ValueError, match='is a plain matrix'):
        fn(module=module, n_layers=2, d_model=4)
