"""``wesar_llama``'s options: bad keys are refused before any compute, naming the key and the
allowed values (the shared keys: ``test_reparam_options.py``); the HF config carries them."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from tests.helpers import build_model
from wesar_foundry.models.llama_config import WeSaRLlamaConfig, WeSaRLlamaOptions


@pytest.mark.parametrize('kwargs, match', [
    ({'reparam': 'lora'}, r"model.reparam='lora'.*allowed values: wesar, none, weight_norm, sigma_reparam, residual_scaling, multipliers"),
    ({'multipliers': 'row'}, r"model.multipliers='row' is not allowed with model.reparam='wesar'.*scalar, row, column, row_column"),
    ({'mlp_type': 'relu'}, r'model.mlp_type.*allowed values: gelu, swiglu'),
    ({'init_config': {'name': 'kaiming_normal_'}}, r'init_config.name.*allowed: wesar_, he, small'),
    ({'tie_word_embeddings': True}, r"tie_word_embeddings=True is not allowed \(model.reparam='wesar'\)"),
    ({'d_modle': 64}, r'model \(wesar_llama\): unknown option\(s\) d_modle; allowed: .*\bd_model\b'),
    ({'n_heads': 3}, r'divisible by model.n_heads=3'),
    ({'n_layers': 0}, r'model.n_layers=0 must be a positive integer'),
    ({'expansion_ratio': 0}, r'model.expansion_ratio=0 must be > 0'),
    ({'rope_theta': -1.0}, r'model.rms_norm_eps and model.rope_theta must be > 0'),
    ({'attn_implementation': 'flash'}, r"model.attn_implementation='flash' is not allowed"),
    ({'init_device': 'cuda'}, r"init_device='cuda'; allowed: cpu, meta, mixed"),
])
def test_bad_option_is_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_vocab_smaller_than_the_tokenizer_is_refused():
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({f't{i}': i for i in range(200)}, unk_token='t0')))
    with pytest.raises(ValueError, match=r'model.vocab_size=100 is smaller than the tokenizer \(200 tokens\)'):
        build_model(tokenizer=tok, vocab_size=100)


@pytest.mark.parametrize('reparam', ['none', 'wesar', 'multipliers'])
def test_tied_embeddings_are_refused_because_no_tied_export_exists(reparam):
    with pytest.raises(ValueError, match=r'tie_word_embeddings=True is not allowed .*could never be exported'):
        build_model(reparam=reparam, tie_word_embeddings=True)


def test_train_metrics_can_be_switched_off_but_eval_metrics_stay():
    model = build_model(use_train_metrics=False)
    assert not model.get_metrics(is_train=True)
    assert {'LanguageCrossEntropy', 'LanguagePerplexity'} <= set(model.get_metrics(is_train=False))  # + ICL metrics


def test_the_hf_config_carries_the_sizes_and_the_reparameterization():
    options = WeSaRLlamaOptions.from_kwargs({'d_model': 64, 'n_layers': 3, 'n_heads': 4, 'expansion_ratio': 2.5,
                                             'mlp_type': 'swiglu', 'reparam': 'weight_norm',
                                             'init_config': {'name': 'small', 'sigma2': 1e-4}})
    config = options.to_hf_config()
    assert isinstance(config, WeSaRLlamaConfig) and config.model_type == 'wesar_llama'
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (64, 3, 4, 160)
    assert (config.mlp_type, config.hidden_act, config.reparam, config.init_target) == ('swiglu', 'silu', 'weight_norm', 'small')
    assert config.sigma2 == pytest.approx(1e-4) and config.sigma_choice['gate_scale'] == 1.0
    assert not config.tie_word_embeddings and not config.attention_bias and not config.mlp_bias


@pytest.mark.parametrize('multipliers, saved', [(None, 'row_column'), ('row', 'row')])
def test_the_hf_config_saves_and_reloads_the_multipliers(tmp_path, multipliers, saved):
    from transformers import AutoConfig
    options = WeSaRLlamaOptions.from_kwargs({'reparam': 'multipliers', 'multipliers': multipliers})
    options.to_hf_config().save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, WeSaRLlamaConfig) and (config.reparam, config.multipliers) == ('multipliers', saved)
    assert WeSaRLlamaOptions.from_kwargs({}).to_hf_config().multipliers is None  # other reparams have no vectors


def test_the_old_name_of_the_options_still_imports_with_a_warning():
    import wesar_foundry.models.llama_config as module
    with pytest.warns(FutureWarning, match='WeSaRModelConfig was renamed WeSaRLlamaOptions'):
        assert module.WeSaRModelConfig is WeSaRLlamaOptions
