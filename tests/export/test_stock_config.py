"""The one stock-config writer: a gated config of any family less its options, naming the stock
class and the export dtype, with the tokenizer's special ids; a tied config refused."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.helpers import build_hf, build_model
from wesar_foundry.export.adapter import adapter_of
from wesar_foundry.export.stock_config import DROP_KEYS, stock_config


class Tokenizer:
    bos_token_id, eos_token_id, pad_token_id = 3, 4, 5


def gated(family: str, reparam: str = 'wesar'):
    if family == 'wesar_llama':
        return build_model(reparam=reparam).model
    if family == 'wesar_hf':
        return build_hf('phi3', reparam=reparam).model
    from tests.foundry.mpt.helpers import build as build_mpt
    return build_mpt(reparam=reparam).model


@pytest.mark.parametrize('reparam', ['wesar', 'multipliers'])
@pytest.mark.parametrize('family', ['wesar_llama', 'wesar_hf', 'wesar_mpt'])
def test_the_stock_config_carries_only_keys_its_class_knows_and_names_the_class_and_dtype(family, reparam):
    model = gated(family, reparam)
    config, cls = adapter_of(model).stock(model.config, torch.bfloat16, Tokenizer())
    known = set(cls.config_class().to_dict())
    assert sorted(set(config.to_dict()) - known) == []  # every option of the gated config was dropped
    assert (config.architectures, config.torch_dtype) == ([cls.__name__], torch.bfloat16)
    assert config.model_type == cls.config_class.model_type


def test_every_architecture_key_is_kept_as_it_trained():
    model = build_hf('phi3').model
    config, _ = adapter_of(model).stock(model.config, torch.float32)
    kept = {k: v for k, v in model.config.to_dict().items() if k not in DROP_KEYS}
    assert kept and all(getattr(config, k) == v for k, v in kept.items())


def test_the_tokenizers_special_ids_replace_the_configs():
    model = build_model().model
    config = stock_config(model.config, LlamaForCausalLM, torch.float32, Tokenizer())
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (3, 4, 5)
    assert stock_config(model.config, LlamaForCausalLM, torch.float32).eos_token_id == model.config.eos_token_id


def test_a_tied_config_is_refused_it_has_no_stock_form():
    # No builder makes one (each refuses tie_word_embeddings=True): a config edited by hand.
    model = build_model().model
    model.config.tie_word_embeddings = True
    with pytest.raises(ValueError, match='tie_word_embeddings=True: no wesar-foundry model is built tied'):
        stock_config(model.config, LlamaForCausalLM, torch.float32)
