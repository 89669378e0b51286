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


# --- gate_scale: α = s·a (sigma2: auto) -------------------------------------------------------

def test_a_gate_scale_stores_alpha_over_s_and_merges_to_the_same_matrix():
    plain, scaled = WeSaRMatrix(16, 8, 'down'), WeSaRMatrix(16, 8, 'down', gate_scale=0.01)
    for m in (plain, scaled):
        m.init_(target_std=0.003, sigma=0.0063, generator=torch.Generator().manual_seed(0))
    assert scaled.alpha.item() == pytest.approx(plain.alpha.item() / 0.01, rel=1e-6)
    assert scaled.gain().item() == pytest.approx(plain.alpha.item(), rel=1e-6)
    torch.testing.assert_close(scaled.merged_weight(), plain.merged_weight(), rtol=1e-6, atol=0)
    # A persistent buffer: a checkpoint's a comes back with the s it was trained with.
    assert set(scaled.state_dict()) == {'weight', 'alpha', 'gate_scale'} and set(plain.state_dict()) == {'weight', 'alpha'}
    assert scaled.gate_scale.dtype == torch.float32


def test_the_gate_scale_survives_to_empty_through_init():
    m = WeSaRMatrix(4, 4, 'q', gate_scale=0.25, device='meta').to_empty(device='cpu')
    m.init_(target_std=0.5, sigma=0.5)
    assert m.gate_scale.item() == 0.25 and m.gain().item() == pytest.approx(1.0)


def test_under_adam_auto_sigma_and_gate_scale_follow_the_reference_trajectory():
    """σ ∝ lr and s = (lr_ref/lr)²: Adam's steps on W and a are scale-free, so at 10× the lr the
    effective matrix W̄ = s·a·W moves exactly as at the reference lr (Adam's ε aside)."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 16)
    runs = []
    # c = lr/lr_ref: σ = c·σ_ref, s = 1/c²; the third run has auto's σ without its gate scale.
    for lr, c, s in ((1e-3, 1.0, 1.0), (1e-2, 10.0, 0.01), (1e-2, 10.0, 1.0)):
        m = WeSaRMatrix(16, 8, 'down', gate_scale=s)
        m.init_(target_std=0.02, sigma=0.0063 * c, generator=torch.Generator().manual_seed(1))
        opt = torch.optim.Adam(m.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-30)
        path = []
        for _ in range(20):
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            opt.step()
            path.append(m.merged_weight().clone())
        runs.append(torch.stack(path))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-4, atol=1e-7)
    assert (runs[0][-1] - runs[0][0]).abs().max() > 1e-3  # it did move
    assert (runs[2][-1] - runs[0][-1]).abs().max() > 1e-3  # the gate scale is what keeps it there
