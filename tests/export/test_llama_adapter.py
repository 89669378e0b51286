"""``wesar_llama`` → stock ``LlamaForCausalLM``: every reparam and MLP type merges into a checkpoint
that plain transformers loads and that computes the same logits, the GeLU MLP in Llama's gated form."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from tests.export.helpers import spread_multipliers, trained_with_spread_multipliers
from tests.helpers import TINY_MODEL, adam_steps, batch, build_model
from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.export import export_model, to_stock
from wesar_foundry.reparam import MULTIPLIERS, REPARAMS

MLP_TYPES = ('gelu', 'swiglu')
CASES = [(r, m) for r in REPARAMS for m in MLP_TYPES]
GATES = ('alpha', 'g', 'gamma', 'row_mult', 'col_mult')
INPUT_IDS = batch(seq=24, seed=1)['input_ids']
GENERATE = ('wesar-gelu-trained', 'sigma_reparam-swiglu-trained', 'none-gelu-trained')


def gains(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.rsplit('.', 1)[-1] in GATES}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Every reparam × mlp_type after a few training steps (the multipliers' r, c and α spread
    first, far from their init; and the paper's model at init too), exported in fp32 and loaded by a single plain-transformers subprocess; with our eval-mode
    logits and greedy generations."""
    root = tmp_path_factory.mktemp('export')
    dirs, ours, generated, moved = {}, {}, {}, {}
    for reparam, mlp, trained in [(r, m, True) for r, m in CASES] + [('wesar', 'gelu', False)]:
        name = f'{reparam}-{mlp}-{"trained" if trained else "init"}'
        torch.manual_seed(0)
        cm = build_model(reparam=reparam, mlp_type=mlp)
        if reparam == 'multipliers':
            assert spread_multipliers(cm.model) == 2 * len(cm.model.reparam_modules())  # row_column: r and c
        before = gains(cm.model)
        if trained:
            adam_steps(cm, range(10, 13))
        moved[name] = all(not torch.equal(before[k], v) for k, v in gains(cm.model).items())
        model = cm.model.eval()
        with torch.no_grad():
            ours[name] = model(input_ids=INPUT_IDS).logits
        if name in GENERATE:
            generated[name] = model.generate(INPUT_IDS[:, :4], attention_mask=torch.ones_like(INPUT_IDS[:, :4]),
                                             max_new_tokens=8, min_new_tokens=8, do_sample=False)
        dirs[name] = export_model(model, root / name, dtype='fp32')
    loaded = load_with_stock_transformers(dirs, INPUT_IDS, root / 'loader')
    return {'dirs': dirs, 'ours': ours, 'generated': generated, 'moved': moved, 'loaded': loaded}


@pytest.mark.slow
@pytest.mark.parametrize('reparam,mlp', CASES)
def test_stock_transformers_logits_equal_ours_in_fp32_after_training(exported, reparam, mlp):
    name = f'{reparam}-{mlp}-trained'
    got = exported['loaded'][name]
    assert (got['class'], got['model_type']) == ('LlamaForCausalLM', 'llama')
    torch.testing.assert_close(got['logits'], exported['ours'][name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_stock_transformers_logits_equal_ours_at_init(exported):
    got = exported['loaded']['wesar-gelu-init']
    assert (got['class'], got['model_type']) == ('LlamaForCausalLM', 'llama')
    torch.testing.assert_close(got['logits'], exported['ours']['wesar-gelu-init'], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_training_steps_moved_every_gate(exported):
    # Otherwise the "trained" cases would not test the merge of learned gates (vacuous for the
    # gate-less reparams none and residual_scaling, whose weights moved instead).
    trained = [n for n in exported['moved'] if n.endswith('-trained')]
    assert len(trained) == len(CASES) and all(exported['moved'][n] for n in trained)


@pytest.mark.slow
def test_the_loader_process_imported_nothing_of_ours(exported):
    assert exported['loaded']['_our_modules'] == []


@pytest.mark.slow
def test_greedy_generate_runs_is_deterministic_and_matches_ours(exported):
    for name in GENERATE:
        first, second = exported['loaded'][name]['generated']
        assert first.shape == (INPUT_IDS.shape[0], 4 + 8)
        assert torch.equal(first, second)
        assert torch.equal(first, exported['generated'][name])


@pytest.mark.slow
def test_gelu_mlp_is_llamas_gated_mlp_with_a_constant_one_up_proj(exported):
    folder = exported['dirs']['wesar-gelu-trained']
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_type'] == 'llama' and config['architectures'] == ['LlamaForCausalLM']
    assert (config['hidden_act'], config['mlp_bias'], config['attention_bias']) == ('gelu', True, False)
    assert not any(k in config for k in ('reparam', 'mlp_type', 'sigma2', 'sigma_choice', 'init_target'))
    weights = load_file(folder / 'model.safetensors')
    assert all(t.dtype == torch.float32 for t in weights.values())
    mlp = 'model.layers.1.mlp.'
    assert torch.count_nonzero(weights[mlp + 'up_proj.weight']) == 0
    assert torch.equal(weights[mlp + 'up_proj.bias'], torch.ones(TINY_MODEL['d_model'] * 4))
    assert torch.count_nonzero(weights[mlp + 'gate_proj.bias']) == 0
    assert torch.count_nonzero(weights[mlp + 'down_proj.bias']) == 0
    assert not any(k.endswith(('.alpha', '.g', '.gamma', '.u', '.v')) or 'self_attn' in k and k.endswith('bias')
                   for k in weights)


@pytest.mark.slow
def test_swiglu_exports_without_biases(exported):
    config = json.loads((exported['dirs']['wesar-swiglu-trained'] / 'config.json').read_text())
    assert (config['hidden_act'], config['mlp_bias']) == ('silu', False)
    assert not any(k.endswith('bias') for k in load_file(exported['dirs']['wesar-swiglu-trained'] / 'model.safetensors'))


@pytest.mark.parametrize('mlp', MLP_TYPES)
def test_to_stock_is_a_llama_computing_the_same_logits_in_process(mlp):
    torch.manual_seed(0)
    cm = build_model(mlp_type=mlp)
    adam_steps(cm, range(10, 13))
    model = cm.model.eval()
    stock = to_stock(model)
    assert type(stock) is LlamaForCausalLM and stock.config.hidden_act == ('gelu' if mlp == 'gelu' else 'silu')
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=INPUT_IDS).logits, model(input_ids=INPUT_IDS).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_every_multipliers_choice_merges_into_a_llama_computing_the_trained_logits(multipliers):
    torch.manual_seed(0)
    model = trained_with_spread_multipliers(build_model(reparam='multipliers', multipliers=multipliers), range(10, 13))
    stock = to_stock(model)
    assert type(stock) is LlamaForCausalLM and not hasattr(stock.config, 'multipliers')
    assert not [k for k in stock.state_dict() if k.endswith(GATES)]
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=INPUT_IDS).logits, model(input_ids=INPUT_IDS).logits, rtol=0, atol=1e-5)
