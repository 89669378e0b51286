"""Weight Normalization: w̄_r = g_r·w_r/‖w_r‖, one trainable gain per output row."""

import pytest
import torch

from wesar_foundry.reparam import WeightNormMatrix


def test_gains_start_so_that_the_effective_weight_is_the_target_init():
    m = WeightNormMatrix(64, 48, 'o')
    m.init_(target_std=0.01, sigma=0.04, generator=torch.Generator().manual_seed(0))
    assert m.g.shape == (64,) and m.g.dtype == torch.float32
    assert m.weight.std().item() == pytest.approx(0.04, rel=0.05)
    assert torch.allclose(m.merged_weight(), m.weight.detach() * 0.25, rtol=1e-5)


def test_the_effective_weight_ignores_the_scale_of_the_stored_rows():
    m = WeightNormMatrix(8, 16, 'q')
    m.init_(0.1, 0.02)
    before = m.merged_weight()
    with torch.no_grad():
        m.weight.mul_(torch.arange(1, 9, dtype=torch.float32).unsqueeze(1))
    assert torch.allclose(m.merged_weight(), before, rtol=1e-5)


def test_embedding_rows_are_token_vectors():
    m = WeightNormMatrix(10, 6, 'emb', kind='embedding')
    m.init_(1.0, 0.02)
    ids = torch.tensor([[1, 7, 7]])
    assert torch.allclose(m(ids), m.merged_weight()[ids], rtol=1e-6)
