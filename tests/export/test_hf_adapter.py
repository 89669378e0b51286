"""Export of ``wesar_hf`` models: every reparameterization merges into the stock class of the same
model_type (biases and fused matrices included) computing the same logits; the merged config is
the stock one. (Through train(), a checkpoint and a clean process: tests/foundry/test_composer_models_train_hf.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from tests.export.helpers import spread_multipliers
from tests.helpers import adam_steps, batch, build_hf
from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.export import export_model, to_stock
from wesar_foundry.reparam import MULTIPLIERS, REPARAMS

INPUT_IDS = batch(seq=24, seed=4)['input_ids']


def trained(model_type: str, reparam: str, **kwargs):
    """A few Adam steps on the model's own loss (train mode: σReparam's power iteration runs too);
    the multipliers' r, c and α spread far from their init first."""
    torch.manual_seed(0)
    cm = build_hf(model_type, reparam=reparam, **kwargs)
    if reparam == 'multipliers':
        spread_multipliers(cm.model)
    adam_steps(cm, range(10, 12))
    return cm.model.eval()


@pytest.mark.parametrize('reparam', REPARAMS)
@pytest.mark.parametrize('model_type, cls', [('gpt_neox', 'GPTNeoXForCausalLM'), ('phi3', 'Phi3ForCausalLM')])
def test_every_reparam_merges_into_the_stock_class_with_the_same_logits(model_type, cls, reparam):
    model = trained(model_type, reparam)
    stock = to_stock(model)
    assert type(stock).__name__ == cls and stock.config.model_type == model_type
    assert not hasattr(stock.config, 'wesar_hf')
    with torch.no_grad():
        want = model(input_ids=INPUT_IDS).logits
        torch.testing.assert_close(stock(input_ids=INPUT_IDS).logits, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_the_written_config_is_the_stock_one_in_the_export_dtype(tmp_path):
    out = export_model(trained('qwen2', 'wesar'), tmp_path / 'out', dtype='bf16')
    config = json.loads((out / 'config.json').read_text())
    assert (config['model_type'], config['architectures'], config['torch_dtype']) == ('qwen2', ['Qwen2ForCausalLM'], 'bfloat16')
    assert 'wesar_hf' not in config


@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_every_multipliers_choice_merges_into_gpt_neox_biases_and_fused_qkv_included(multipliers):
    model = trained('gpt_neox', 'multipliers', multipliers=multipliers)
    stock = to_stock(model)
    assert type(stock).__name__ == 'GPTNeoXForCausalLM'
    with torch.no_grad():
        want = model(input_ids=INPUT_IDS).logits
        torch.testing.assert_close(stock(input_ids=INPUT_IDS).logits, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.slow
def test_exported_multipliers_models_load_in_plain_transformers_with_the_trained_logits(tmp_path):
    models = {t: trained(t, 'multipliers') for t in ('gpt_neox', 'phi3')}
    with torch.no_grad():
        want = {t: m(input_ids=INPUT_IDS).logits for t, m in models.items()}
    dirs = {t: export_model(m, tmp_path / t, dtype='fp32') for t, m in models.items()}
    for folder in dirs.values():
        config = json.loads((folder / 'config.json').read_text())
        assert 'wesar_hf' not in config and 'multipliers' not in config
    loaded = load_with_stock_transformers(dirs, INPUT_IDS, tmp_path / 'loader', generate=False)
    assert loaded['_our_modules'] == []
    for t, cls in (('gpt_neox', 'GPTNeoXForCausalLM'), ('phi3', 'Phi3ForCausalLM')):
        assert (loaded[t]['class'], loaded[t]['model_type']) == (cls, t)
        torch.testing.assert_close(loaded[t]['logits'], want[t], rtol=1e-5, atol=1e-5 * want[t].abs().max().item())
