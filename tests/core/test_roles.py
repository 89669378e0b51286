"""Role tables: every matrix of every supported family gets the role its architecture gives it;
anything else is an error naming the matrix and the model. Name heuristics for other models."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from wesar_foundry.core.roles import (
    HF_ROLE_TABLES, LLAMA_ROLES, MPT_ROLES, assign_roles, check_family, infer_layer, infer_role,
)

SIZES = {'hidden_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 2, 'intermediate_size': 64,
         'vocab_size': 512, 'pad_token_id': 0}
LLAMA_LAYER = {'self_attn.q_proj': 'q', 'self_attn.k_proj': 'k', 'self_attn.v_proj': 'v', 'self_attn.o_proj': 'o',
               'mlp.gate_proj': 'gate', 'mlp.up_proj': 'up', 'mlp.down_proj': 'down'}
# Per family: (prefix of the blocks, {matrix in a block: role}, embedding, head).
LAYOUTS = {
    'llama': ('model.layers', LLAMA_LAYER, 'model.embed_tokens', 'lm_head'),
    'mistral': ('model.layers', LLAMA_LAYER, 'model.embed_tokens', 'lm_head'),
    'qwen2': ('model.layers', LLAMA_LAYER, 'model.embed_tokens', 'lm_head'),
    'qwen3': ('model.layers', LLAMA_LAYER, 'model.embed_tokens', 'lm_head'),
    'gpt_neox': ('gpt_neox.layers', {'attention.query_key_value': 'qkv', 'attention.dense': 'o',
                                     'mlp.dense_h_to_4h': 'up', 'mlp.dense_4h_to_h': 'down'},
                 'gpt_neox.embed_in', 'embed_out'),
    'phi3': ('model.layers', {'self_attn.qkv_proj': 'qkv', 'self_attn.o_proj': 'o', 'mlp.gate_up_proj': 'gate_up',
                              'mlp.down_proj': 'down'}, 'model.embed_tokens', 'lm_head'),
}
# llm-foundry's MPT per layout option: {matrix in a block: role} (embedding transformer.wte, head lm_head).
MPT_LAYOUTS = {
    'default': {'attn.Wqkv': 'qkv', 'attn.out_proj': 'o', 'ffn.up_proj': 'up', 'ffn.down_proj': 'down'},
    'unfused_qkv': {'attn.Wq': 'q', 'attn.Wk': 'k', 'attn.Wv': 'v', 'attn.out_proj': 'o', 'ffn.up_proj': 'up',
                    'ffn.down_proj': 'down'},
    'glu': {'attn.Wqkv': 'qkv', 'attn.out_proj': 'o', 'ffn.up_proj': 'up', 'ffn.down_proj': 'down',
            'ffn.gate_proj': 'gate'},
    'fused_norm_attn_norm': {'norm_attn_norm.attn.Wqkv': 'qkv', 'norm_attn_norm.attn.out_proj': 'o',
                             'ffn.up_proj': 'up', 'ffn.down_proj': 'down'},
}


def matrices(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]


def stock_matrices(model_type: str) -> list[str]:
    config = AutoConfig.for_model(model_type, **SIZES)
    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # imported outside the meta device (lazy imports fail under it)
    with torch.device('meta'):
        model = cls(config)
    return matrices(model)


def stock_mpt_matrices(layout: str) -> list[str]:
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    attn = {'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf', 'fused_qkv': layout != 'unfused_qkv'}
    config = MPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=32, vocab_size=64, tie_word_embeddings=False,
                       attn_config=attn, ffn_config={'ffn_type': 'mptglu' if layout == 'glu' else 'mptmlp'},
                       fuse_norm_attn_norm=layout == 'fused_norm_attn_norm', init_device='meta')
    with torch.device('meta'):
        return matrices(MPTForCausalLM(config))


def test_the_required_families_have_tables():
    assert set(LAYOUTS) <= set(HF_ROLE_TABLES)
    assert HF_ROLE_TABLES['llama'] is LLAMA_ROLES  # wesar_llama's table is transformers' Llama's


@pytest.mark.parametrize('model_type', list(LAYOUTS))
def test_every_matrix_of_the_stock_model_gets_its_role(model_type):
    blocks, layer, emb, head = LAYOUTS[model_type]
    want = {emb: 'emb', head: 'head'}
    want.update({f'{blocks}.{i}.{name}': role for i in range(SIZES['num_hidden_layers']) for name, role in layer.items()})
    assert assign_roles(stock_matrices(model_type), check_family(model_type), model='wesar_hf') == want


@pytest.mark.parametrize('layout', list(MPT_LAYOUTS))
def test_every_matrix_of_llm_foundrys_mpt_gets_its_role(layout):
    want = {'transformer.wte': 'emb', 'lm_head': 'head'}
    want.update({f'transformer.blocks.{i}.{name}': role for i in range(2) for name, role in MPT_LAYOUTS[layout].items()})
    assert assign_roles(stock_mpt_matrices(layout), MPT_ROLES, model='wesar_mpt') == want


@pytest.mark.parametrize('model', ['wesar_hf (llama)', 'wesar_mpt'])
def test_an_unmatched_matrix_is_an_error_naming_it_and_the_model(model):
    names = ['model.embed_tokens', 'model.layers.0.mlp.extra_proj', 'lm_head']
    with pytest.raises(ValueError, match=rf'^{re.escape(model)}: no role for matrix model\.layers\.0\.mlp\.extra_proj; '
                                         r'.*model\.roles'):
        assign_roles(names, LLAMA_ROLES, model=model)


def test_an_override_is_tried_before_the_table():
    names = ['model.embed_tokens', 'model.layers.0.mlp.extra_proj', 'model.layers.0.mlp.up_proj', 'lm_head']
    roles = assign_roles(names, LLAMA_ROLES, {r'mlp\.(extra|up)_proj$': 'gate'}, model='wesar_hf')
    assert roles['model.layers.0.mlp.extra_proj'] == roles['model.layers.0.mlp.up_proj'] == 'gate'


def test_an_override_that_matches_nothing_is_refused_naming_the_model():
    with pytest.raises(ValueError, match=r"pattern\(s\) 'q_porj' match no matrix of this wesar_mpt model"):
        assign_roles(['transformer.wte', 'lm_head'], MPT_ROLES, {'q_porj': 'q'}, model='wesar_mpt')


def test_an_override_with_an_unknown_role_is_refused_with_the_allowed_roles():
    with pytest.raises(ValueError, match=r"model.roles\['q_proj'\]='query' is not a matrix role; allowed: emb, q, .*qkv, gate_up"):
        assign_roles(['model.embed_tokens'], LLAMA_ROLES, {'q_proj': 'query'}, model='wesar_hf')


def test_an_override_that_is_not_a_regular_expression_is_refused_by_name():
    with pytest.raises(ValueError, match=r"model.roles: 'q_proj\(' is not a valid regular expression"):
        assign_roles(['model.embed_tokens'], LLAMA_ROLES, {'q_proj(': 'q'}, model='wesar_hf')


@pytest.mark.parametrize('model_type, reason', [
    ('gemma', r'multiplies the embedding output by √hidden_size'),
    ('bloom', r'has no role table'),
])
def test_a_family_without_a_table_is_refused_with_the_reason_and_the_supported_ones(model_type, reason):
    with pytest.raises(ValueError, match=rf'{reason}.*Supported: llama, mistral, qwen2, qwen3, gpt_neox, phi3'):
        check_family(model_type)


@pytest.mark.parametrize('name, role, layer', [
    ('model.layers.3.self_attn.q_proj.weight', 'q', 3),
    ('model.layers.3.self_attn.o_proj.weight', 'o', 3),
    ('model.layers.0.mlp.gate_proj.weight', 'gate', 0),
    ('model.layers.0.mlp.up_proj.weight', 'up', 0),
    ('model.layers.11.mlp.down_proj.weight', 'down', 11),
    ('model.embed_tokens.weight', 'emb', None),
    ('lm_head.weight', 'head', None),
    ('transformer.h.2.attn.c_attn.weight', 'qkv', 2),  # GPT-2
    ('transformer.h.2.attn.c_proj.weight', 'o', 2),
    ('transformer.h.2.mlp.c_fc.weight', 'up', 2),
    ('transformer.h.2.mlp.c_proj.weight', 'down', 2),
    ('transformer.wte.weight', 'emb', None),
    ('transformer.blocks.1.attn.Wqkv.weight', 'qkv', 1),  # MPT
    ('transformer.blocks.1.attn.out_proj.weight', 'o', 1),
    ('gpt_neox.layers.4.mlp.dense_4h_to_h.weight', 'down', 4),
    ('gpt_neox.layers.4.attention.dense.weight', 'o', 4),
    ('model.layers.1.input_layernorm.weight', None, 1),
])
def test_roles_and_layers_of_other_models_are_inferred_from_common_names(name, role, layer):
    assert infer_role(name) == role
    assert infer_layer(name) == layer
