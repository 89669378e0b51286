"""One factory, one placement: the module each reparam asks for, and a built model's plain layers
replaced in place (shape, bias, device, dtype, carried attributes), with what no init would
initialize refused by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wesar_foundry.core.init_targets import stored_embedding_std
from wesar_foundry.models.placement import Reparameterization, new_matrix, place_matrices, with_bias
from wesar_foundry.reparam import (
    REPARAMS, MultiplierMatrix, PlainMatrix, ReparamMatrix, ResidualScaledMatrix, SigmaReparamMatrix, WeSaRMatrix,
    WeightNormMatrix,
)

CLASSES = {'wesar': WeSaRMatrix, 'none': PlainMatrix, 'weight_norm': WeightNormMatrix,
           'sigma_reparam': SigmaReparamMatrix, 'residual_scaling': ResidualScaledMatrix, 'multipliers': MultiplierMatrix}
TOY_ROLES = ((r'^embed$', 'emb'), (r'\.proj$', 'up'), (r'^head$', 'head'))


class Toy(nn.Module):
    """A model as a family's own code builds it: plain layers, a norm, one layer marked for FSDP."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.embed = nn.Embedding(10, 4, dtype=dtype)
        self.block = nn.ModuleDict({'proj': nn.Linear(4, 6, bias=True, dtype=dtype), 'norm': nn.LayerNorm(6, dtype=dtype)})
        self.head = nn.Linear(6, 10, bias=False, dtype=dtype)
        self.head._fsdp_wrap = True


def how(reparam: str = 'wesar', **kwargs) -> Reparameterization:
    if reparam == 'multipliers':
        kwargs.setdefault('multipliers', 'row_column')
    return Reparameterization(reparam, 'he', d_model=4, n_layers=2, **kwargs)


@pytest.mark.parametrize('reparam', REPARAMS)
def test_each_reparam_gets_its_own_module_and_a_plain_embedding_its_constant(reparam):
    linear = new_matrix(how(reparam), 6, 4, 'up')
    assert type(linear) is CLASSES[reparam] and (linear.role, linear.kind) == ('up', 'linear')
    emb = new_matrix(how(reparam), 10, 4, 'emb', 'embedding')
    if reparam in ('none', 'residual_scaling'):  # no gate: "Spike No More" by a constant
        assert type(emb) is PlainMatrix and emb.scale == pytest.approx(1 / stored_embedding_std('he', 4))
    else:
        assert type(emb) is CLASSES[reparam]


def test_the_models_settings_reach_the_matrix():
    assert new_matrix(how('wesar', gate_scale=0.25), 6, 4, 'up').gate_scale.item() == 0.25
    assert new_matrix(how('sigma_reparam', gamma_init='spectral'), 6, 4, 'up').gamma_init == 'spectral'
    assert new_matrix(how('residual_scaling'), 6, 4, 'o').scale == pytest.approx(1 / 2)  # 1/√(2N), N = 2
    m = new_matrix(how('multipliers', gate_scale=0.25, multipliers='column'), 6, 4, 'up')
    assert (m.gate_scale.item(), m.multipliers, m.row_mult, m.col_mult.shape) == (0.25, 'column', None, (4,))


def test_a_biased_matrix_adds_its_bias_after_the_gated_product():
    m = new_matrix(how(), 6, 4, 'up', bias=True)
    assert type(m) is with_bias(WeSaRMatrix) and isinstance(m, WeSaRMatrix)  # one class per method, cached
    with torch.no_grad():
        m.weight.normal_()
        m.alpha.fill_(3.0)
        m.bias.copy_(torch.arange(6.0))
    x = torch.randn(2, 4)
    torch.testing.assert_close(m(x), x @ (3.0 * m.weight).T + torch.arange(6.0))


def test_a_biased_multiplier_matrix_adds_its_bias_after_the_multiplied_product():
    m = new_matrix(how('multipliers'), 6, 4, 'up', bias=True)
    assert type(m) is with_bias(MultiplierMatrix) and isinstance(m, MultiplierMatrix)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m.weight.normal_(generator=g)
        m.alpha.fill_(3.0)
        m.row_mult.copy_(0.5 + torch.rand(6, generator=g))
        m.col_mult.copy_(0.5 + torch.rand(4, generator=g))
        m.bias.copy_(torch.arange(6.0))
    r, c = m.row_mult / m.row_mult.square().mean().sqrt(), m.col_mult / m.col_mult.square().mean().sqrt()
    x = torch.randn(2, 4, generator=g)
    torch.testing.assert_close(m(x), x @ (3.0 * r[:, None] * m.weight * c).T + torch.arange(6.0))


def test_an_embedding_with_a_bias_is_refused():
    with pytest.raises(ValueError, match=r'a bias is for linear maps only, not embedding \(role emb\)'):
        new_matrix(how(), 10, 4, 'emb', 'embedding', bias=True)


def test_every_plain_layer_is_replaced_in_place_with_its_shape_bias_and_marks():
    model = Toy()
    before = [n for n, _ in model.named_modules()]
    roles = place_matrices(model, how(), TOY_ROLES, model_name='toy')
    assert roles == {'embed': 'emb', 'block.proj': 'up', 'head': 'head'}
    assert [n for n, _ in model.named_modules()] == before  # same tree, same order
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [
        ('embed.weight', (10, 4)), ('embed.alpha', (1,)), ('block.proj.weight', (6, 4)), ('block.proj.alpha', (1,)),
        ('block.proj.bias', (6,)), ('block.norm.weight', (6,)), ('block.norm.bias', (6,)),
        ('head.weight', (10, 6)), ('head.alpha', (1,))]
    assert all(type(model.get_submodule(n)) in (WeSaRMatrix, with_bias(WeSaRMatrix)) for n in roles)
    assert (model.embed.kind, model.block.proj.kind) == ('embedding', 'linear')
    assert model.head._fsdp_wrap is True and not hasattr(model.block.proj, '_fsdp_wrap')


def test_the_replacements_keep_the_device_and_dtype_of_the_layers_they_replace():
    with torch.device('meta'):
        model = Toy(dtype=torch.bfloat16)
    place_matrices(model, how(), TOY_ROLES, model_name='toy')
    mats = [m for m in model.modules() if isinstance(m, ReparamMatrix)]
    assert len(mats) == 3
    assert all(m.weight.is_meta and m.weight.dtype == torch.bfloat16 for m in mats)
    assert model.block.proj.bias.is_meta and model.block.proj.bias.dtype == torch.bfloat16
    assert all(m.alpha.dtype == torch.float32 for m in mats)  # gates stay fp32 masters


def test_overrides_come_before_the_table():
    model = Toy()
    roles = place_matrices(model, how(), TOY_ROLES, {r'proj$': 'gate'}, model_name='toy')
    assert roles['block.proj'] == model.block.proj.role == 'gate'


def test_a_matrix_without_a_role_is_refused_naming_it_and_the_model():
    model = Toy()
    model.block['extra'] = nn.Linear(6, 6)
    with pytest.raises(ValueError, match=r'^toy: no role for matrix block\.extra; '):
        place_matrices(model, how(), TOY_ROLES, model_name='toy')


@pytest.mark.parametrize('overrides, match', [
    ({r'^embed$': 'up'}, r'model.roles: embed is an Embedding, so its role must be emb \(got \'up\'\)'),
    ({r'^head$': 'emb'}, r'model.roles: head is an Linear, so its role must not be emb \(got \'emb\'\)'),
])
def test_a_role_that_does_not_fit_the_layers_kind_is_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        place_matrices(Toy(), how(), TOY_ROLES, overrides, model_name='toy')


def test_a_module_holding_parameters_no_init_initializes_is_refused_by_name():
    model = Toy()
    model.block['experts'] = nn.ParameterList([nn.Parameter(torch.zeros(6, 6))])  # as MoE weights held raw
    with pytest.raises(ValueError, match=r'^toy: block\.experts \(ParameterList\) holds parameters that no '
                                         r'wesar-foundry init function initializes'):
        place_matrices(model, how(), TOY_ROLES, model_name='toy')


def test_a_family_can_say_which_other_modules_its_init_initializes():
    model = Toy()
    model.block['experts'] = nn.ParameterList([nn.Parameter(torch.zeros(6, 6))])
    place_matrices(model, how(), TOY_ROLES, model_name='toy',
                   initialized=lambda m: isinstance(m, (ReparamMatrix, nn.LayerNorm, nn.ParameterList)))
    assert isinstance(model.head, WeSaRMatrix)
