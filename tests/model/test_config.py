"""Bad model options are refused before any compute, naming the key and the allowed values."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from tests.helpers import build_model


@pytest.mark.parametrize('kwargs, match', [
    ({'reparam': 'lora'}, r"model.reparam='lora'.*allowed values: wesar, none, weight_norm, sigma_reparam, residual_scaling"),
    ({'mlp_type': 'relu'}, r'model.mlp_type.*allowed values: gelu, swiglu'),
    ({'init_config': {'name': 'wesar_', 'target': 'xavier'}}, r"init_config.target='xavier'.*allowed: he, small"),
    ({'init_config': {'name': 'kaiming_normal_'}}, r'init_config.name.*allowed: wesar_, he, small'),
    ({'init_config': {'name': 'wesar_', 'sigma2': 0.0}}, r'init_config.sigma2=0.0 must be a finite number > 0'),
    ({'init_config': {'name': 'wesar_', 'sigma2': -4e-5}}, r'init_config.sigma2'),
    ({'init_config': {'name': 'wesar_', 'sigma': 4e-5}}, r'unknown model.init_config key\(s\) sigma; allowed keys: name, target, sigma2, lr, ref_lr, ref_sigma2, gate_scale'),
    ({'init_config': {'name': 'wesar_', 'sigma2': 'auto'}}, r'init_config.sigma2: auto needs .*init_config.lr'),
    ({'tie_word_embeddings': True}, r"tie_word_embeddings=True is not allowed \(model.reparam='wesar'\)"),
    ({'d_modle': 64}, r'model \(wesar_llama\): unknown option\(s\) d_modle; allowed: d_model'),
    ({'n_heads': 3}, r'divisible by model.n_heads=3'),
    ({'init_device': 'cuda'}, r"init_device='cuda'; allowed: cpu, meta, mixed"),
])
def test_bad_option_is_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_vocab_smaller_than_the_tokenizer_is_refused(tiny_data):
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_data / 'tokenizer')
    from wesar_foundry.model.composer import WeSaRComposerModel
    with pytest.raises(ValueError, match=rf'model.vocab_size=100 is smaller than the tokenizer \({len(tok)} tokens\)'):
        WeSaRComposerModel(tokenizer=tok, d_model=32, n_layers=1, n_heads=2, vocab_size=100)


@pytest.mark.parametrize('reparam', ['none', 'wesar'])
def test_tied_embeddings_are_refused_because_no_tied_export_exists(reparam):
    with pytest.raises(ValueError, match=r'tie_word_embeddings=True is not allowed .*could never be exported'):
        build_model(reparam=reparam, tie_word_embeddings=True)


def test_train_metrics_can_be_switched_off_but_eval_metrics_stay():
    model = build_model(use_train_metrics=False)
    assert not model.get_metrics(is_train=True)
    assert {'LanguageCrossEntropy', 'LanguagePerplexity'} <= set(model.get_metrics(is_train=False))  # + ICL metrics
