"""The Composer wrappers: the loss (cross-entropy plus z-loss over the tokens that have a target),
the options each keeps, and the 0.1 name of the ``wesar_llama`` wrapper."""

from __future__ import annotations

import pytest
import torch

from tests.foundry.mpt.helpers import build as build_mpt
from tests.helpers import batch, build_hf, build_model
from wesar_foundry.foundry.composer_models import IGNORE_INDEX, WeSaRLlamaComposerModel
from wesar_foundry.foundry.mpt.config import WeSaRMPTOptions
from wesar_foundry.models.hf import WeSaRHFOptions
from wesar_foundry.models.llama_config import WeSaRLlamaOptions


def test_a_microbatch_whose_labels_are_all_ignored_has_a_zero_loss_not_nan():
    model = build_model()
    b = batch()
    b['labels'][:] = IGNORE_INDEX
    losses = model.loss(model(b), b)
    assert set(losses) == set(model.loss_names)
    assert all(v.item() == 0.0 for v in losses.values())
    losses['total'].backward()  # still on the graph: Composer backpropagates every microbatch
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_the_loss_is_the_mean_over_the_tokens_that_have_a_target():
    model = build_model()
    b = batch()
    half = {**b, 'labels': b['labels'].clone()}
    half['labels'][:, 8:] = IGNORE_INDEX
    logits = model(b)
    ce = model.loss(logits, half)['ce']
    want = torch.nn.functional.cross_entropy(logits[:, :7].reshape(-1, logits.shape[-1]).float(), b['labels'][:, 1:8].reshape(-1))
    torch.testing.assert_close(ce, want)


@pytest.mark.parametrize('build, options', [(build_model, WeSaRLlamaOptions), (build_hf, WeSaRHFOptions),
                                            (build_mpt, WeSaRMPTOptions)])
def test_each_wrapper_keeps_its_validated_options_and_their_sigma_choice(build, options):
    model = build(init_config={'name': 'wesar_', 'sigma2': 'auto', 'lr': 2e-3}, z_loss=3e-4)
    assert type(model.options) is options
    assert model.z_loss == 3e-4 and model.sigma_choice == model.options.sigma_choice
    assert model.sigma_choice.gate_scale == pytest.approx(0.25)


def test_the_old_name_of_the_wesar_llama_wrapper_still_imports_with_a_warning():
    import wesar_foundry.foundry.composer_models as module
    with pytest.warns(FutureWarning, match='WeSaRComposerModel was renamed WeSaRLlamaComposerModel'):
        assert module.WeSaRComposerModel is WeSaRLlamaComposerModel
