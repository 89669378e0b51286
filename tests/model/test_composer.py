"""The Composer wrapper's loss: cross-entropy plus z-loss over the tokens that have a target."""

from __future__ import annotations

import torch

from tests.helpers import batch, build_model
from wesar_foundry.model.composer import IGNORE_INDEX


def test_a_microbatch_whose_labels_are_all_ignored_has_a_zero_loss_not_nan():
    model = build_model()
    b = batch()
    b['labels'][:] = IGNORE_INDEX
    losses = model.loss(model(b), b)
    assert set(losses) == set(model.loss_names)
    assert all(v.item() == 0.0 for v in losses.values())
    losses['total'].backward()  # still on the graph: Composer backpropagates every microbatch
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_loss_is_the_mean_over_the_tokens_that_have_a_target():
    model = build_model()
    b = batch()
    half = {**b, 'labels': b['labels'].clone()}
    half['labels'][:, 8:] = IGNORE_INDEX
    logits = model(b)
    ce = model.loss(logits, half)['ce']
    want = torch.nn.functional.cross_entropy(logits[:, :7].reshape(-1, logits.shape[-1]).float(), b['labels'][:, 1:8].reshape(-1))
    torch.testing.assert_close(ce, want)
