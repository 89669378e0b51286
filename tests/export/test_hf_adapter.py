"""Export of ``wesar_hf`` models: every reparameterization merges into the stock class of the same
model_type (biases and fused matrices included) computing the same logits; the merged config is
the stock one. (Through train(), a checkpoint and a clean process: tests/foundry/test_composer_models_train_hf.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import adam_steps, batch, build_hf
from wesar_foundry.export import export_model, to_stock
from wesar_foundry.reparam import REPARAMS

INPUT_IDS = batch(seq=24, seed=4)['input_ids']


def trained(model_type: str, reparam: str):
    """A few Adam steps on the model's own loss (train mode: σReparam's power iteration runs too)."""
    torch.manual_seed(0)
    cm = build_hf(model_type, reparam=reparam)
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
