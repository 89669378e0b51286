"""``WeSaRMPTForCausalLM``: every matrix gets its role's reparameterization and target std; the
``roles`` overrides come first; what no init would initialize is refused by name."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.foundry.mpt.helpers import INPUT_IDS, build
from tests.helpers import INITS
from wesar_foundry.core.init_targets import target_std
from wesar_foundry.core.roles import MPT_ROLES
from wesar_foundry.foundry.mpt.modeling import initialized
from wesar_foundry.models.placement import Reparameterization, place_matrices
from wesar_foundry.reparam import MULTIPLIERS, MultiplierMatrix
from wesar_foundry.reparam.multipliers import VECTORS

BLOCK_ROLES = {'attn.Wqkv': 'qkv', 'attn.out_proj': 'o', 'ffn.up_proj': 'up', 'ffn.down_proj': 'down'}


def roles(model) -> dict[str, str]:
    return {name: m.role for name, m in model.reparam_modules().items()}


@pytest.mark.parametrize('reparam', list(INITS))
def test_every_matrix_gets_the_reparameterization_with_its_roles_target_std(reparam):
    model = build(reparam=reparam, init_config=INITS[reparam]).model
    assert roles(model) == {'transformer.wte': 'emb', 'lm_head': 'head',
                            **{f'transformer.blocks.{i}.{m}': r for i in range(2) for m, r in BLOCK_ROLES.items()}}
    assert not [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    target = INITS[reparam]['name'] if INITS[reparam]['name'] != 'wesar_' else 'he'
    for name, m in model.reparam_modules().items():
        want = target_std(m.role, target, 32, 2, m.in_features if m.kind == 'linear' else None)
        got = m.effective_weight().detach().std().item()
        if reparam != 'sigma_reparam':  # σReparam normalizes W: the target has no say
            assert got == pytest.approx(want, rel=0.1), name
        if reparam == 'wesar':
            assert m.alpha.item() == pytest.approx(want / math.sqrt(4e-5), rel=1e-6), name


@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_multipliers_place_their_vectors_where_chosen_and_compute_wesars_logits_at_init(multipliers):
    torch.manual_seed(0)
    wesar = build(no_bias=False).model.eval()
    torch.manual_seed(0)
    ours = build(no_bias=False, reparam='multipliers', multipliers=multipliers).model.eval()
    assert roles(ours) == roles(wesar)
    for name, m in ours.reparam_modules().items():
        assert isinstance(m, MultiplierMatrix) and m.multipliers == multipliers, name
        bias = {'bias'} if m.kind == 'linear' and name != 'lm_head' else set()  # no_bias: false biases MPT's blocks
        assert set(dict(m.named_parameters())) == {'weight', 'alpha', *VECTORS[multipliers]} | bias, name
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=INPUT_IDS).logits, wesar(input_ids=INPUT_IDS).logits, rtol=0, atol=1e-6)


def test_the_embedding_and_the_head_keep_mpts_fsdp_marks():
    # MPT marks them _fsdp_wrap (read by Composer's FSDP); the reparameterized matrices carry the mark over.
    model = build().model
    assert model.transformer.wte._fsdp_wrap is True and model.lm_head._fsdp_wrap is True


def test_sigma_auto_gives_every_gate_its_constant_and_the_fixed_sigma_function_at_init():
    torch.manual_seed(0)
    fixed = build().model.eval()
    torch.manual_seed(0)
    auto = build(init_config={'name': 'wesar_', 'sigma2': 'auto', 'lr': 1e-2}).model.eval()
    scales = {n: b.item() for n, b in auto.named_buffers() if n.endswith('.gate_scale')}
    assert scales and len(scales) == len(auto.reparam_modules()) and all(v == pytest.approx(0.01) for v in scales.values())
    with torch.no_grad():
        torch.testing.assert_close(auto(input_ids=INPUT_IDS).logits, fixed(input_ids=INPUT_IDS).logits, atol=2e-5, rtol=0)


def test_a_role_override_is_tried_before_mpts_table():
    torch.manual_seed(0)
    model = build(roles={r'\.attn\.out_proj$': 'down'}).model
    changed = {n: r for n, r in roles(model).items() if n.endswith('.attn.out_proj')}
    assert changed == {'transformer.blocks.0.attn.out_proj': 'down', 'transformer.blocks.1.attn.out_proj': 'down'}
    # The gate now carries W_d's He target (fan-in d), not W_o's: √2 larger.
    o = model.transformer.blocks[0].attn.out_proj
    assert o.alpha.item() * math.sqrt(4e-5) == pytest.approx(target_std('down', 'he', 32, 2, fan_in=32), rel=1e-6)
    assert target_std('down', 'he', 32, 2, fan_in=32) == pytest.approx(math.sqrt(2) * target_std('o', 'he', 32, 2))


def test_a_role_override_that_matches_no_matrix_is_refused_by_name():
    with pytest.raises(ValueError, match=r"model.roles: pattern\(s\) 'out_porj\$' match no matrix of this wesar_mpt "
                                         r"model \(names look like 'transformer.wte'\)"):
        build(roles={r'out_porj$': 'o'})


def test_a_matrix_without_a_role_is_an_error_naming_it_and_the_model():
    model = build().model
    model.transformer.blocks[1].extra = nn.Linear(32, 32)  # as an unknown MPT option might add
    how = Reparameterization('wesar', 'he', 32, 2)
    with pytest.raises(ValueError, match=r'wesar_mpt: no role for matrix transformer\.blocks\.1\.extra; .*model\.roles'):
        place_matrices(model, how, MPT_ROLES, model_name='wesar_mpt', initialized=initialized)


def test_llm_foundrys_own_norms_count_as_initialized():
    # MPT's param_init_fn runs llm-foundry's norm init after ours: its RMSNorms are not refused.
    model = build(norm_type='low_precision_rmsnorm').model
    norms = [m for n, m in model.named_modules() if type(m).__name__ == 'LPRMSNorm']
    assert norms and all(initialized(m) for m in norms)
    assert not initialized(nn.Bilinear(2, 2, 2))
