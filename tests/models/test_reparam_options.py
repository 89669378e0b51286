"""The keys every reparameterized model shares are declared once (``ReparamOptions``): the same
defaults, derived values and refusals for ``wesar_llama``, ``wesar_hf`` and ``wesar_mpt``."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from wesar_foundry.foundry.mpt.config import WeSaRMPTOptions
from wesar_foundry.models.hf import WeSaRHFOptions
from wesar_foundry.models.llama_config import WeSaRLlamaOptions
from wesar_foundry.models.reparam_options import ReparamOptions, TransformersOptions

# Each family's options with its own required keys, the shared ones left to the caller.
FAMILIES = {
    'wesar_llama': lambda **kw: WeSaRLlamaOptions(**kw),
    'wesar_hf': lambda **kw: WeSaRHFOptions(model_type='llama', **kw),
    'wesar_mpt': lambda **kw: WeSaRMPTOptions(**kw),
}
SHARED = ('reparam', 'multipliers', 'init_config', 'z_loss', 'sigma_reparam_gamma_init', 'use_train_metrics')


def test_the_shared_keys_are_the_bases_fields():
    assert tuple(f.name for f in fields(ReparamOptions)) == SHARED


@pytest.mark.parametrize('family', list(FAMILIES))
def test_every_family_takes_the_shared_keys_with_the_same_defaults(family):
    options = FAMILIES[family]()
    assert isinstance(options, ReparamOptions)
    assert {k: getattr(options, k) for k in SHARED} == {k: getattr(ReparamOptions(), k) for k in SHARED}
    options.validate()  # the defaults are valid


def test_only_the_models_transformers_builds_take_its_attention_key():
    assert issubclass(WeSaRLlamaOptions, TransformersOptions) and issubclass(WeSaRHFOptions, TransformersOptions)
    assert 'attn_implementation' not in {f.name for f in fields(WeSaRMPTOptions)}


@pytest.mark.parametrize('family', list(FAMILIES))
@pytest.mark.parametrize('kwargs, match', [
    ({'reparam': 'lora'}, r"model.reparam='lora'.*allowed values: wesar, none, weight_norm, sigma_reparam, residual_scaling, multipliers"),
    ({'reparam': 'multipliers', 'multipliers': 'rows'}, r"model.multipliers='rows' is not allowed; allowed values: scalar, row, column, row_column"),
    ({'multipliers': 'row'}, r"model.multipliers='row' is not allowed with model.reparam='wesar': only reparam: multipliers "
                             r"has multiplier vectors \(allowed values there: scalar, row, column, row_column\)"),
    ({'reparam': 'none', 'multipliers': 'scalar'}, r"model.multipliers='scalar' is not allowed with model.reparam='none'"),
    ({'sigma_reparam_gamma_init': 'two'}, r"model.sigma_reparam_gamma_init='two' is not allowed; allowed values: one, spectral"),
    ({'z_loss': -1.0}, r'model.z_loss=-1.0 must be a finite number >= 0'),
    ({'init_config': {'name': 'wesar_', 'target': 'xavier'}}, r"init_config.target='xavier'.*allowed: he, small"),
    ({'init_config': {'name': 'kaiming_normal_'}}, r'init_config.name.*allowed: wesar_, he, small'),
    ({'init_config': {'name': 'he', 'target': 'small'}}, r"init_config.target='small' contradicts init_config.name='he'"),
    ({'init_config': {'name': 'wesar_', 'sigma2': 0.0}}, r'init_config.sigma2=0.0 must be a finite number > 0'),
    ({'init_config': {'name': 'wesar_', 'sigma2': -4e-5}}, r'init_config.sigma2'),
    ({'init_config': {'name': 'wesar_', 'sigma': 4e-5}}, r'unknown model.init_config key\(s\) sigma; allowed keys: name, target, sigma2, lr, ref_lr, ref_sigma2, ref_width, gate_scale'),
    ({'init_config': {'name': 'wesar_', 'sigma2': 'auto'}}, r'init_config.sigma2: auto needs .*init_config.lr'),
    ({'init_config': 'wesar_'}, r'model.init_config must be a mapping'),
])
def test_a_bad_shared_key_is_refused_by_name_in_every_family(family, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FAMILIES[family](**kwargs).validate()


@pytest.mark.parametrize('family', ['wesar_llama', 'wesar_hf'])
def test_a_bad_attention_kernel_is_refused_by_name(family):
    with pytest.raises(ValueError, match=r"model.attn_implementation='flash' is not allowed; allowed values: eager, sdpa"):
        FAMILIES[family](attn_implementation='flash').validate()


@pytest.mark.parametrize('init_config, name, target, sigma2, gate_scale', [
    ({}, 'wesar_', 'he', 4e-5, 1.0),
    ({'name': 'small'}, 'small', 'small', 4e-5, 1.0),
    ({'name': 'wesar_', 'target': 'small', 'sigma2': 1e-4}, 'wesar_', 'small', 1e-4, 1.0),
    ({'name': 'wesar_', 'sigma2': 'auto', 'lr': 1e-2}, 'wesar_', 'he', 4e-3, 1e-2),
])
def test_the_init_name_target_and_sigma_are_derived_from_init_config(init_config, name, target, sigma2, gate_scale):
    options = ReparamOptions(init_config=init_config)
    assert (options.init_name, options.init_target) == (name, target)
    assert options.sigma2 == pytest.approx(sigma2) and options.sigma == pytest.approx(math.sqrt(sigma2))
    assert options.sigma_choice.gate_scale == pytest.approx(gate_scale)


@pytest.mark.parametrize('reparam, multipliers, chosen', [
    ('multipliers', None, 'row_column'), ('multipliers', 'scalar', 'scalar'), ('multipliers', 'column', 'column'),
    ('wesar', None, None), ('weight_norm', None, None),
])
def test_unset_multipliers_mean_row_column_with_reparam_multipliers_and_nothing_with_any_other(reparam, multipliers, chosen):
    options = ReparamOptions(reparam=reparam, multipliers=multipliers)
    options.validate()
    assert options.chosen_multipliers == chosen


def builders():
    """Each family's registered Composer model at the tiny size: the real option path (from_kwargs, split)."""
    from tests.foundry.mpt.helpers import build as build_mpt
    from tests.helpers import build_hf, build_model
    return {'wesar_llama': build_model, 'wesar_hf': lambda **kw: build_hf('gpt_neox', **kw), 'wesar_mpt': build_mpt}


@pytest.mark.parametrize('family', list(FAMILIES))
@pytest.mark.parametrize('kwargs, match', [
    ({'reparam': 'sigma_reparam', 'multipliers': 'row_column'},
     r"model.multipliers='row_column' is not allowed with model.reparam='sigma_reparam'.*scalar, row, column, row_column"),
    ({'reparam': 'residual_scaling', 'multipliers': 'row'}, r"model.multipliers='row' is not allowed with model.reparam='residual_scaling'"),
    ({'reparam': 'multipliers', 'multipliers': 'both'}, r"model.multipliers='both' is not allowed; allowed values: scalar, row, column, row_column"),
])
def test_contradicting_multipliers_are_refused_by_every_registered_model(family, kwargs, match):
    with pytest.raises(ValueError, match=match):
        builders()[family](**kwargs)
