"""``wesar_mpt``'s options: our keys are checked by name, and what a stock MPT cannot express is
refused with the reason."""

from __future__ import annotations

import pytest

from tests.foundry.mpt.helpers import build
from wesar_foundry.foundry.mpt.config import WeSaRMPTConfig, WeSaRMPTOptions


@pytest.mark.parametrize('reparam', ['wesar', 'multipliers'])
def test_mpts_default_tied_embedding_is_refused_with_the_reason(reparam):
    with pytest.raises(ValueError, match=r'tie_word_embeddings=True .*two different gains on one matrix.*'
                                         r'tie_word_embeddings: false'):
        build(reparam=reparam, tie_word_embeddings=True)


def test_learned_position_embeddings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r'learned_pos_emb=True .*transformer\.wpe .*no role'):
        build(attn_config={'attn_impl': 'torch'})


def test_an_ffn_whose_weights_are_not_linear_layers_is_refused():
    with pytest.raises(ValueError, match=r"ffn_type='torch_dmoe' is not allowed .*allowed: mptmlp, mptglu"):
        build(ffn_config={'ffn_type': 'torch_dmoe'})


def test_our_keys_and_mpts_are_told_apart():
    options, mpt = WeSaRMPTOptions.split({'reparam': 'none', 'roles': {'Wqkv$': 'qkv'}, 'd_model': 64,
                                          'attn_config': {'rope': True}})
    assert (options.reparam, options.roles) == ('none', {'Wqkv$': 'qkv'})
    assert mpt == {'d_model': 64, 'attn_config': {'rope': True}}


def test_the_hf_attention_key_is_not_a_wesar_mpt_key():
    # MPT picks its kernel with attn_config.attn_impl; attn_implementation belongs to the HF-built models.
    with pytest.raises(ValueError, match=r'unknown option\(s\) attn_implementation'):
        WeSaRMPTOptions.split({'attn_implementation': 'sdpa'})


@pytest.mark.parametrize('roles, match', [
    ({'Wqkv(': 'qkv'}, r"model.roles: 'Wqkv\(' is not a valid regular expression"),
    ({'Wqkv$': 'query'}, r"model.roles\['Wqkv\$'\]='query' is not a matrix role; allowed: emb, q, "),
    (['Wqkv$'], r'model.roles must be a mapping'),
])
def test_a_bad_role_override_is_refused_by_name_before_any_compute(roles, match):
    with pytest.raises(ValueError, match=match):
        WeSaRMPTOptions.split({'roles': roles})


def test_an_init_config_without_a_name_uses_wesar_as_documented():
    # MPT would fill a missing name with its own default init, which cannot initialize gated matrices.
    config = build(init_config={'sigma2': 4e-5}).model.config
    assert config.init_config['name'] == 'wesar_'


def test_the_role_overrides_are_saved_with_the_config():
    config = build(roles={r'\.attn\.out_proj$': 'down'}).model.config
    assert WeSaRMPTConfig.from_dict(config.to_dict()).roles == {r'\.attn\.out_proj$': 'down'}


@pytest.mark.parametrize('multipliers, saved', [(None, 'row_column'), ('row', 'row')])
def test_the_multipliers_are_saved_with_the_config(multipliers, saved):
    config = build(reparam='multipliers', multipliers=multipliers).model.config
    assert config.multipliers == saved
    assert WeSaRMPTConfig.from_dict(config.to_dict()).multipliers == saved  # what the export rebuilds from
    assert build().model.config.multipliers is None


def test_multipliers_with_a_reparam_without_vectors_are_refused_by_name():
    with pytest.raises(ValueError, match=r"model.multipliers='column' is not allowed with model.reparam='weight_norm'.*"
                                         r'scalar, row, column, row_column'):
        WeSaRMPTOptions.split({'reparam': 'weight_norm', 'multipliers': 'column'})
