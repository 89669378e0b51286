"""Every ``reparam`` in the model: target statistics at init, exact merge into plain weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.helpers import batch, build_model
from wesar_foundry.core.init_targets import target_std
from wesar_foundry.reparam import REPARAMS, merge_module

D, N = 128, 4
BIG = dict(d_model=D, n_layers=N, n_heads=4, vocab_size=2048)
INITS = {'wesar': {'name': 'wesar_'}, 'none': {'name': 'he'}, 'weight_norm': {'name': 'wesar_', 'sigma2': 16e-5},
         'sigma_reparam': {'name': 'wesar_', 'sigma2': 16e-5}, 'residual_scaling': {'name': 'small'},
         'multipliers': {'name': 'wesar_'}}


@pytest.mark.parametrize('reparam', [r for r in REPARAMS if r != 'sigma_reparam'])
def test_effective_weights_have_the_target_std_at_init(reparam):
    torch.manual_seed(0)
    model = build_model(reparam=reparam, init_config=INITS[reparam], **BIG)
    target = 'small' if reparam == 'residual_scaling' else 'he'
    mats = model.model.reparam_modules()
    assert mats
    for name, m in mats.items():
        if m.role == 'emb':
            continue  # output std 1: tests/models/test_llama.py
        fan_in = m.in_features
        assert m.merged_weight().std().item() == pytest.approx(target_std(m.role, target, D, N, fan_in), rel=0.06), name


def test_sigma_reparam_effective_weights_have_unit_spectral_norm_at_init():
    model = build_model(reparam='sigma_reparam', init_config=INITS['sigma_reparam'], **BIG)
    mats = model.model.reparam_modules()
    assert mats
    for name, m in mats.items():
        assert torch.linalg.matrix_norm(m.merged_weight(), 2).item() == pytest.approx(1.0, rel=0.02), name


def test_parameter_count_adds_one_gate_per_matrix_or_one_gain_per_row_or_a_gate_and_two_vectors():
    counts = {r: sum(p.numel() for p in build_model(reparam=r, init_config=INITS[r]).parameters()) for r in REPARAMS}
    mats = build_model().model.reparam_modules().values()
    assert mats
    assert counts['residual_scaling'] == counts['none']
    assert counts['wesar'] == counts['sigma_reparam'] == counts['none'] + len(mats)
    assert counts['weight_norm'] == counts['none'] + sum(m.weight.shape[0] for m in mats)
    # reparam: multipliers with its default row_column: α, r (rows,) and c (cols,) per matrix
    assert counts['multipliers'] == counts['wesar'] + sum(sum(m.weight.shape) for m in mats)


def merged_copy(model) -> nn.Module:
    """The inner HF model with every reparameterized matrix replaced by a plain one holding W̄."""
    import copy
    hf = copy.deepcopy(model.model)
    for name, m in list(hf.reparam_modules().items()):
        parent, _, attr = name.rpartition('.')
        setattr(hf.get_submodule(parent), attr, merge_module(m))
    return hf


@pytest.mark.parametrize('mlp_type', ['gelu', 'swiglu'])
@pytest.mark.parametrize('reparam', REPARAMS)
def test_merge_is_exact(reparam, mlp_type):
    torch.manual_seed(0)
    model = build_model(reparam=reparam, init_config=INITS[reparam], mlp_type=mlp_type)
    with torch.no_grad():  # move every gain off its init, as training does
        for n, p in model.named_parameters():
            if n.endswith(('.alpha', '.g', '.gamma', '.row_mult', '.col_mult')):
                p.mul_(1 + 0.3 * torch.rand_like(p))
    model.eval()
    merged = merged_copy(model).eval()
    assert not list(merged.reparam_modules())
    x = batch()
    with torch.no_grad():
        ours = model(x)
        plain = merged(input_ids=x['input_ids'], use_cache=False).logits
    assert torch.allclose(ours, plain, atol=1e-5, rtol=0)


def test_sigma_reparams_embedding_output_std_is_not_one_but_one_over_sqrt_vocab_plus_sqrt_d():
    """σReparam normalizes the embedding by its spectral norm too (the README says so): a Gaussian
    (V, d) table has σ_max ≈ σ(√V + √d), so W̄ has std ≈ 1/(√V + √d) at γ = 1."""
    model = build_model(reparam='sigma_reparam', init_config=INITS['sigma_reparam'], **BIG)
    emb = model.model.model.embed_tokens
    vocab, d = emb.weight.shape
    assert emb.merged_weight().std().item() == pytest.approx(1 / (math.sqrt(vocab) + math.sqrt(d)), rel=0.1)
