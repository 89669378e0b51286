"""Role tables: every matrix of every supported family gets the role the architecture notes give it;
anything else is an error naming it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from wesar_foundry.roles import ROLE_TABLES, assign_roles

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


def stock_matrices(model_type: str) -> list[str]:
    config = AutoConfig.for_model(model_type, **SIZES)
    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # imported outside the meta device (lazy imports fail under it)
    with torch.device('meta'):
        model = cls(config)
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]


def test_the_required_families_have_tables():
    assert set(LAYOUTS) <= set(ROLE_TABLES)


@pytest.mark.parametrize('model_type', list(LAYOUTS))
def test_every_matrix_of_the_stock_model_gets_its_role(model_type):
    blocks, layer, emb, head = LAYOUTS[model_type]
    want = {emb: 'emb', head: 'head'}
    want.update({f'{blocks}.{i}.{name}': role for i in range(SIZES['num_hidden_layers']) for name, role in layer.items()})
    assert assign_roles(stock_matrices(model_type), model_type) == want


def test_an_unmatched_matrix_is_an_error_naming_it():
    names = ['model.embed_tokens', 'model.layers.0.mlp.extra_proj', 'lm_head']
    with pytest.raises(ValueError, match=r'no role for matrix model\.layers\.0\.mlp\.extra_proj; .*model\.roles'):
        assign_roles(names, 'llama')


def test_an_override_is_tried_before_the_table():
    names = ['model.embed_tokens', 'model.layers.0.mlp.extra_proj', 'model.layers.0.mlp.up_proj', 'lm_head']
    roles = assign_roles(names, 'llama', {r'mlp\.(extra|up)_proj$': 'gate'})
    assert roles['model.layers.0.mlp.extra_proj'] == roles['model.layers.0.mlp.up_proj'] == 'gate'


def test_an_override_that_matches_nothing_is_refused():
    with pytest.raises(ValueError, match=r"pattern\(s\) 'q_porj' match no matrix"):
        assign_roles(['model.embed_tokens', 'lm_head'], 'llama', {'q_porj': 'q'})


def test_an_override_with_an_unknown_role_is_refused_with_the_allowed_roles():
    with pytest.raises(ValueError, match=r"model.roles\['q_proj'\]='query' is not a matrix role; allowed: emb, q, .*qkv, gate_up"):
        assign_roles(['model.embed_tokens'], 'llama', {'q_proj': 'query'})


@pytest.mark.parametrize('model_type, reason', [
    ('gemma', r'multiplies the embedding output by √hidden_size'),
    ('bloom', r'has no role table'),
])
def test_a_family_without_a_table_is_refused_with_the_reason_and_the_supported_ones(model_type, reason):
    with pytest.raises(ValueError, match=rf'{reason}.*Supported: llama, mistral, qwen2, qwen3, gpt_neox, phi3'):
        assign_roles(['x'], model_type)
