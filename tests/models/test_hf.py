"""``wesar_hf``: a stock HF causal decoder with every matrix reparameterized — the targets, the
parity with ``wesar_llama``, init on meta, FSDP units, and what is refused before any compute."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AutoConfig

from tests.helpers import FAMILY_KEYS, HF_SIZES, batch, build_hf, build_model
from wesar_foundry.export import to_stock
from wesar_foundry.core.init_targets import target_std
from wesar_foundry.foundry.composer_models import WeSaRHFComposerModel
from wesar_foundry.models.hf import from_checkpoint_config
from wesar_foundry.reparam import MULTIPLIERS, MultiplierMatrix, WeSaRMatrix
from wesar_foundry.reparam.multipliers import VECTORS

SIGMA = math.sqrt(4e-5)
D, N = HF_SIZES['hidden_size'], HF_SIZES['num_hidden_layers']


@pytest.mark.parametrize('model_type', list(FAMILY_KEYS))
def test_no_plain_linear_or_embedding_is_left(model_type):
    model = build_hf(model_type).model
    assert not [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Embedding)]
    mats = model.reparam_modules()
    assert mats and all(isinstance(m, WeSaRMatrix) for m in mats.values())


@pytest.mark.parametrize('model_type', list(FAMILY_KEYS))
def test_every_gate_carries_the_target_of_its_role(model_type):
    torch.manual_seed(0)
    mats = build_hf(model_type).model.reparam_modules()
    assert mats
    for name, m in mats.items():
        fan_in = m.in_features if m.kind == 'linear' else None
        assert m.alpha.item() * SIGMA == pytest.approx(target_std(m.role, 'he', D, N, fan_in), rel=1e-6), name
        assert m.weight.std().item() == pytest.approx(SIGMA, rel=0.2), name


@pytest.mark.parametrize('model_type, biased', [('qwen2', r'\.[qkv]_proj$'), ('gpt_neox', r'(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)$')])
def test_stock_biases_are_kept_and_start_at_zero(model_type, biased):
    import re
    mats = build_hf(model_type).model.reparam_modules()
    with_bias = {n for n, m in mats.items() if isinstance(getattr(m, 'bias', None), torch.Tensor)}
    assert with_bias and with_bias == {n for n in mats if re.search(biased, n)}
    assert all(torch.count_nonzero(mats[n].bias) == 0 for n in with_bias)


@pytest.mark.parametrize('model_type', ['llama', 'gpt_neox'])
def test_sigma_auto_gives_every_gate_its_constant_and_the_fixed_sigma_function_at_init(model_type):
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    fixed = build_hf(model_type).model.eval()
    torch.manual_seed(0)
    auto = build_hf(model_type, init_config={'name': 'wesar_', 'sigma2': 'auto', 'lr': 3e-3}).model.eval()
    scales = {n: b.item() for n, b in auto.named_buffers() if n.endswith('.gate_scale')}
    assert scales and len(scales) == len(auto.reparam_modules()) and all(v == pytest.approx(1 / 9) for v in scales.values())
    with torch.no_grad():
        want = auto(input_ids=ids).logits
        torch.testing.assert_close(want, fixed(input_ids=ids).logits, atol=2e-5, rtol=0)
        stock = to_stock(auto)  # the merge reads α = s·a: the stock model computes the same
        assert stock.config.model_type == model_type
        torch.testing.assert_close(stock(input_ids=ids).logits, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('multipliers', MULTIPLIERS)
@pytest.mark.parametrize('model_type', ['llama', 'gpt_neox', 'phi3'])
def test_multipliers_at_init_compute_wesars_logits_with_fp32_vectors_exactly_where_chosen(model_type, multipliers):
    """Biased layers (GPT-NeoX's every linear) keep their bias; r = c = 1, so W̄ = α·W is WeSaR's."""
    ids = batch(seed=2)['input_ids']
    torch.manual_seed(0)
    wesar = build_hf(model_type).model.eval()
    torch.manual_seed(0)
    ours = build_hf(model_type, reparam='multipliers', multipliers=multipliers).model.eval()
    mats, twins = ours.reparam_modules(), wesar.reparam_modules()
    assert mats and mats.keys() == twins.keys()
    biased = 0
    for name, m in mats.items():
        assert isinstance(m, MultiplierMatrix) and m.multipliers == multipliers, name
        params = dict(m.named_parameters())
        bias = {'bias'} if 'bias' in dict(twins[name].named_parameters()) else set()
        biased += bool(bias)
        assert set(params) == {'weight', 'alpha', *VECTORS[multipliers]} | bias, name
        assert all(params[v].dtype == torch.float32 for v in VECTORS[multipliers]), name
        assert torch.equal(m.weight, twins[name].weight) and torch.equal(m.alpha, twins[name].alpha), name
    assert biased == (len(mats) - 2 if model_type == 'gpt_neox' else 0)  # all but the embedding and the head
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, wesar(input_ids=ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize('multipliers, saved', [(None, 'row_column'), ('column', 'column')])
def test_the_config_carries_the_multipliers_and_rebuilds_the_same_model(multipliers, saved):
    model = build_hf('gpt_neox', reparam='multipliers', multipliers=multipliers).model
    assert model.config.wesar_hf['multipliers'] == saved
    rebuilt = type(model)(from_checkpoint_config(model.config.to_dict()))  # what export rebuilds from a checkpoint
    shapes = lambda m: {n: p.shape for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(rebuilt) == shapes(model)
    assert build_hf('gpt_neox').model.config.wesar_hf['multipliers'] is None


def test_the_embedding_output_has_std_one_without_gates_too():
    torch.manual_seed(0)
    model = build_hf('gpt_neox', {'hidden_size': 128, 'vocab_size': 2048}, reparam='none').model
    assert model.gpt_neox.embed_in(torch.arange(2048)).std().item() == pytest.approx(1.0, rel=0.03)


def test_llama_swiglu_draws_the_targets_and_computes_the_logits_of_wesar_llama():
    ours = build_model(mlp_type='swiglu').model.eval()  # d=32, 2 layers, 2 heads, vocab 512, seq 32
    hf = build_hf('llama', {'intermediate_size': 128, 'rms_norm_eps': 1e-5, 'pad_token_id': None}).model.eval()
    gates = lambda m: {n: p.item() for n, p in m.named_parameters() if n.endswith('.alpha')}  # noqa: E731
    assert gates(hf) == gates(ours)
    hf.load_state_dict(ours.state_dict())
    ids = batch(seed=2)['input_ids']
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=0, atol=0)


def test_meta_init_one_module_at_a_time_equals_the_cpu_init():
    cpu = build_hf('phi3', reparam='sigma_reparam').model
    meta = build_hf('phi3', reparam='sigma_reparam', init_device='meta').model
    params = list(meta.parameters())
    assert params and all(p.is_meta for p in params)
    meta.to_empty(device='cpu')  # garbage everywhere, the RoPE tables included
    for model in (cpu, meta):
        torch.manual_seed(0)
        model.apply(model.param_init_fn)  # one module at a time, as Composer's FSDP calls it
    want = {**cpu.state_dict(), **dict(cpu.named_buffers())}
    got = {**meta.state_dict(), **dict(meta.named_buffers())}
    assert want and want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('model_type, block', [('llama', 'LlamaDecoderLayer'), ('gpt_neox', 'GPTNeoXLayer')])
def test_fsdp_and_activation_checkpointing_units_are_the_decoder_layers(model_type, block):
    model = build_hf(model_type).model
    wrapped = {type(m).__name__ for m in model.modules() if model.fsdp_wrap_fn(m)}
    checkpointed = {type(m).__name__ for m in model.modules() if model.activation_checkpointing_fn(m)}
    assert wrapped == checkpointed == {block}


def test_a_local_config_folder_builds_its_architecture_with_the_overrides(tmp_path):
    AutoConfig.for_model('qwen2', hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                         intermediate_size=96, vocab_size=512).save_pretrained(tmp_path)
    model = WeSaRHFComposerModel(pretrained_model_name_or_path=str(tmp_path), config_overrides={'hidden_size': 32}).model
    assert type(model).__name__ == 'GatedQwen2ForCausalLM'
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.intermediate_size) == (32, 1, 96)
    # [H·h, d] with h = 32/4 from the overridden width: the config is built once, with the override
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (32, 32)


def test_saving_the_gated_model_as_it_is_is_refused():
    with pytest.raises(RuntimeError, match='saved merged'):
        build_hf().model.save_pretrained('anywhere')


@pytest.mark.parametrize('kwargs, match', [
    ({'config_overrides': {**HF_SIZES, 'tie_word_embeddings': True}},
     r'refuses a tied llama model: the embedding \(target: output std 1\) and the LM head .*Set tie_word_embeddings: false'),
    ({'pretrained': True}, r'model.pretrained=True is not allowed: wesar_hf trains from scratch'),
    ({'d_model': 64}, r'model \(wesar_hf\): unknown option\(s\) d_model; allowed: .*pretrained_model_name_or_path, model_type'),
    ({'config_overrides': {**HF_SIZES, 'hidden_sise': 64}}, r'llama configs have no key\(s\) hidden_sise; known keys: .*hidden_size'),
    ({'pretrained_model_name_or_path': 'x'}, r'give exactly one of model.pretrained_model_name_or_path .* and model.model_type'),
    ({'roles': {'q_proj$': 'emb'}}, r'model.roles: model.layers.0.self_attn.q_proj is an .*Linear, so its role must not be emb'),
    ({'reparam': 'lora'}, r"model.reparam='lora' is not allowed; allowed values: wesar, none"),
    ({'reparam': 'none', 'multipliers': 'row'}, r"model.multipliers='row' is not allowed with model.reparam='none'"),
    ({'reparam': 'multipliers', 'config_overrides': {**HF_SIZES, 'tie_word_embeddings': True}},
     r'refuses a tied llama model: the embedding \(target: output std 1\) and the LM head'),
    ({'model_type': 'gemma'}, r"model_type 'gemma' is not supported: it multiplies the embedding output by √hidden_size"),
])
def test_what_cannot_be_trained_or_exported_is_refused_by_name(kwargs, match):
    kwargs = {'model_type': 'llama', 'config_overrides': HF_SIZES, **kwargs}
    with pytest.raises(ValueError, match=match):
        WeSaRHFComposerModel(**kwargs)


def test_the_model_is_registered_for_yamls():
    from llmfoundry.registry import models
    assert models.get('wesar_hf') is WeSaRHFComposerModel


def test_each_training_forward_ticks_the_sigma_reparam_clock_once():
    model = build_hf('gpt_neox', reparam='sigma_reparam').model.train()
    ids = batch(seed=1)['input_ids']
    model(input_ids=ids)
    model(input_ids=ids)
    assert model.forward_clock.tick == 2
    assert model.forward_clock.matrices == list(model.reparam_modules().values())
