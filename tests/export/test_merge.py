"""The one merge: every W̄ in fp32 and cast once, for every family; consuming the model one matrix at
a time so that it never holds more than the model (plus the GeLU form's extra tensors)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.export.helpers import spread_multipliers
from tests.helpers import adam_steps, build_hf, build_model
from wesar_foundry.export import export_model, merged_state_dict, merged_tensors
from wesar_foundry.export.merge import check_keys, empty_stock_model
from wesar_foundry.reparam import REPARAMS, ReparamMatrix


def live_bytes(*tensors: torch.Tensor) -> int:
    """Bytes of the distinct storages among ``tensors`` (meta tensors hold none)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if not t.is_meta}
    return sum(storages.values())


def steps(composer_model):
    """Two Adam steps (gates and biases away from their init); the HF model, in eval mode."""
    adam_steps(composer_model, range(2), vocab=512)
    return composer_model.model.eval()


def trained_model(reparam: str = 'wesar', mlp: str = 'gelu'):
    torch.manual_seed(0)
    composer_model = build_model(reparam=reparam, mlp_type=mlp)
    if reparam == 'multipliers':
        spread_multipliers(composer_model.model)  # r, c and α far from their init
    return steps(composer_model)


def trained_family(family: str, reparam: str = 'wesar'):
    """A trained tiny model of each family with something beyond Llama's: biases (GPT-NeoX), a fused qkv (MPT)."""
    torch.manual_seed(0)
    if family == 'wesar_mpt':
        from tests.foundry.mpt.helpers import build as build_mpt
        composer_model = build_mpt(no_bias=False, reparam=reparam)
    else:
        composer_model = build_hf('gpt_neox', reparam=reparam)
    if reparam == 'multipliers':
        spread_multipliers(composer_model.model)
    return steps(composer_model)


@pytest.mark.parametrize('reparam, mlp', [('wesar', 'gelu'), ('wesar', 'swiglu'), ('multipliers', 'swiglu')])
def test_releasing_merge_never_holds_more_than_the_model_plus_the_gelu_forms_extra_tensors(reparam, mlp):
    model = trained_model(reparam, mlp)
    size = live_bytes(*model.state_dict().values())
    sources = {m.weight.data_ptr() for m in model.reparam_modules().values()}
    assert sources
    out: dict[str, torch.Tensor] = {}
    peak = 0
    for key, tensor in merged_tensors(model, torch.float32, release=True):
        out[key] = tensor
        # Sampled after each yield: a matrix's module is freed before its result is handed out.
        peak = max(peak, live_bytes(*model.state_dict().values(), *out.values()))
    # Results that free no source: the GeLU form's zero up_proj weights and biases, and the copies
    # of the RMSNorm gains (kept in the model: they are not matrices).
    gelu_only = ('mlp.up_proj.weight', '.bias') if mlp == 'gelu' else ()
    extra = live_bytes(*(t for k, t in out.items() if k.endswith(gelu_only + ('norm.weight',))))
    assert peak <= size + extra, (peak, size, extra)
    # Within a step too: every W̄ was written over its own W, no second matrix was allocated.
    assert sources <= {t.data_ptr() for t in out.values()}
    assert all(m.weight.is_meta for m in model.modules() if isinstance(m, ReparamMatrix))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('reparam', REPARAMS)
def test_the_consuming_merge_gives_the_same_bits_as_merged_state_dict(reparam, dtype):
    # Written over W or computed aside, W̄ is the same fp32 product s ⊙ W, then cast once.
    want = {k: v.to(dtype) for k, v in merged_state_dict(trained_model(reparam)).items()}
    got = dict(merged_tensors(trained_model(reparam), dtype, release=True))
    assert want and got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == dtype and torch.equal(got[key], value), key


@pytest.mark.parametrize('reparam', ['wesar', 'multipliers'])
@pytest.mark.parametrize('family', ['wesar_hf', 'wesar_mpt'])
def test_the_consuming_merge_gives_the_same_bits_for_every_family(family, reparam):
    want = {k: v.to(torch.bfloat16) for k, v in merged_state_dict(trained_family(family, reparam)).items()}
    got = dict(merged_tensors(trained_family(family, reparam), torch.bfloat16, release=True))
    assert any(k.endswith('.bias') for k in want)  # biases are copied, not merged
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == torch.bfloat16 and torch.equal(got[key], value), key


def test_without_release_the_model_is_kept_and_the_merge_holds_a_second_copy():
    # The bound above is not vacuous: keeping the sources doubles what is held.
    model = trained_model(mlp='swiglu')
    size = live_bytes(*model.state_dict().values())
    out = dict(merged_tensors(model, torch.float32))
    merged = live_bytes(*out.values())
    assert live_bytes(*model.state_dict().values(), *out.values()) == size + merged
    assert merged > 0.99 * size  # the model less its gates
    assert not any(m.weight.is_meta for m in model.modules() if isinstance(m, ReparamMatrix))


def test_bf16_export_is_one_cast_of_the_fp32_merge(tmp_path):
    torch.manual_seed(0)
    model = build_model(reparam='wesar').model.eval()
    folder = export_model(model, tmp_path / 'bf16', dtype='bf16')
    weights = load_file(folder / 'model.safetensors')
    fp32 = merged_state_dict(model)
    assert fp32 and set(weights) == set(fp32)
    for key, value in fp32.items():
        assert weights[key].dtype == torch.bfloat16
        assert torch.equal(weights[key], value.to(torch.bfloat16)), key
    assert json.loads((folder / 'config.json').read_text())['torch_dtype'] == 'bfloat16'


def test_a_merged_state_dict_that_does_not_fill_the_stock_class_is_an_error_naming_the_keys():
    from transformers import LlamaConfig, LlamaForCausalLM
    stock = empty_stock_model(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, vocab_size=64), LlamaForCausalLM)
    state = {k: torch.zeros(1) for k in stock.state_dict() if k != 'lm_head.weight'} | {'lm_head.gain': torch.zeros(1)}
    with pytest.raises(RuntimeError, match=r"LlamaForCausalLM: missing \['lm_head.weight'\], unexpected \['lm_head.gain'\]"):
        check_keys(stock, state)
