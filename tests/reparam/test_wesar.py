"""WeSaR: W̄ = α·W, one scalar fp32 gate per matrix."""

import pytest
import torch

from wesar_foundry.reparam import WeSaRMatrix


def test_weight_has_the_common_sigma_and_the_gate_the_ratio():
    m = WeSaRMatrix(128, 64, 'down')
    m.init_(target_std=0.003, sigma=0.0063, generator=torch.Generator().manual_seed(0))
    assert m.weight.std().item() == pytest.approx(0.0063, rel=0.05)
    assert m.alpha.item() == pytest.approx(0.003 / 0.0063, rel=1e-6)
    assert torch.allclose(m.merged_weight(), m.alpha * m.weight, rtol=0, atol=0)


def test_gate_gets_the_gradient_of_the_scale():
    m = WeSaRMatrix(4, 3, 'q')
    m.init_(1.0, 1.0)
    x = torch.randn(5, 3)
    m(x).sum().backward()
    expected = (torch.ones(5, 4).t() @ x * m.weight.detach()).sum()
    assert m.alpha.grad.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bf16_weights_with_an_fp32_gate_compute_in_bf16():
    m = WeSaRMatrix(8, 8, 'q')
    m.init_(0.1, 0.02)
    m.weight.data = m.weight.data.bfloat16()
    y = m(torch.randn(2, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and m.alpha.dtype == torch.float32
