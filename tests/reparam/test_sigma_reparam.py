"""σReparam: W̄ = γ·W/σ_max(W), σ_max from one power-iteration step per training forward."""

import pytest
import torch

from wesar_foundry.reparam import SigmaReparamMatrix


def make(rows=48, cols=32, gamma_init='one', seed=0) -> SigmaReparamMatrix:
    m = SigmaReparamMatrix(rows, cols, 'q', gamma_init=gamma_init)
    m.init_(target_std=0.1, sigma=0.02, generator=torch.Generator().manual_seed(seed))
    return m


def test_power_iteration_converges_to_the_spectral_norm_on_a_fixed_matrix():
    m = SigmaReparamMatrix(64, 40, 'q')
    with torch.no_grad():
        m.weight.normal_(0, 1)
        m.u.normal_(0, 1)
        m.v.normal_(0, 1)
    m.train()
    x = torch.randn(3, 40)
    for _ in range(200):  # one step per training forward
        m(x).sum().backward()
    true = torch.linalg.matrix_norm(m.weight.detach(), 2)
    assert m.sigma_max().item() == pytest.approx(true.item(), rel=0.01)


def test_at_init_gamma_is_one_and_the_effective_weight_has_unit_spectral_norm():
    m = make()
    assert m.gamma.item() == 1.0 and m.gamma.shape == (1,) and m.gamma.dtype == torch.float32
    assert m.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.linalg.matrix_norm(m.merged_weight(), 2).item() == pytest.approx(1.0, rel=0.01)


def test_spectral_gamma_init_reproduces_the_stored_weight():
    m = make(gamma_init='spectral')
    assert torch.allclose(m.merged_weight(), m.weight.detach(), rtol=1e-4, atol=1e-7)


def test_singular_vectors_are_checkpointed_buffers_not_parameters():
    m = make()
    assert {'u', 'v'} <= set(m.state_dict()) and {n for n, _ in m.named_parameters()} == {'weight', 'gamma'}


def test_training_forward_iterates_and_eval_forward_uses_the_stored_vectors():
    m = make()
    x = torch.randn(2, 32)
    m.eval()
    u0 = m.u.clone()
    with torch.no_grad():
        y_eval = m(x)
    assert torch.equal(m.u, u0)
    assert torch.allclose(y_eval, x @ m.merged_weight().t(), atol=1e-6)
    with torch.no_grad():
        m.weight.add_(0.05 * torch.randn_like(m.weight))  # a stale u, as after an optimizer step
    m.train()
    m(x).sum().backward()
    assert not torch.equal(m.u, u0)


def test_gradient_flows_to_the_weight_through_sigma_but_not_into_the_vectors():
    m = make()
    m.train()
    m(torch.randn(4, 32)).pow(2).sum().backward()
    assert m.weight.grad is not None and m.gamma.grad is not None
    assert not m.u.requires_grad and not m.v.requires_grad


def test_unknown_gamma_init_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="sigma_reparam_gamma_init='two'; allowed: one, spectral"):
        SigmaReparamMatrix(4, 4, 'q', gamma_init='two')


def test_bf16_autocast_keeps_the_spectral_norm_in_fp32():
    m = make()
    m.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = m(torch.randn(4, 32))
        sigma = m.sigma_max()
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and sigma.dtype == torch.float32 and m.weight.grad is not None
