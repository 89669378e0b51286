"""σReparam (Zhai et al. 2023): W̄ = γ · W / σ_max(W), σ_max from one power-iteration step per
training step (Miyato et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wesar_foundry.reparam.base import ReparamMatrix, _normal_, new_gate

GAMMA_INITS = ('one', 'spectral')

# Power-iteration steps at init, so that σ_max is accurate from the first forward.
_INIT_ITERATIONS = 30


def _no_autocast(t: torch.Tensor):
    return torch.autocast(t.device.type, enabled=False)


class SigmaReparamMatrix(ReparamMatrix):
    """The singular vectors ``u``, ``v`` are persistent buffers (checkpointed) and never
    differentiated through; σ_max = uᵀWv is differentiated w.r.t. W, as in the paper.

    In training mode each forward first runs one power-iteration step and stores the new
    vectors; in eval mode the stored vectors are used as they are, so eval and ``merge`` agree.

    ``gamma_init='one'`` is the paper's γ = 1; ``'spectral'`` starts γ at σ_max(W) as the original
    authors' code does, so that W̄ = W at init.
    """

    def __init__(self, rows: int, cols: int, role: str, kind: str = 'linear', gamma_init: str = 'one', device=None, dtype=None):
        super().__init__(rows, cols, role, kind, device, dtype)
        if gamma_init not in GAMMA_INITS:
            raise ValueError(f'sigma_reparam_gamma_init={gamma_init!r}; allowed: {", ".join(GAMMA_INITS)}')
        self.gamma_init = gamma_init
        self.gamma = new_gate((1,), device)
        self.register_buffer('u', torch.empty(rows, dtype=torch.float32, device=device))
        self.register_buffer('v', torch.empty(cols, dtype=torch.float32, device=device))

    @torch.no_grad()
    def power_iteration_(self, steps: int = 1) -> None:
        """Refine the stored singular vectors in place (no autograd), in fp32 even under autocast."""
        with _no_autocast(self.weight):
            self._power_iteration(steps)

    def _power_iteration(self, steps: int) -> None:
        w = self.weight.float()
        u, v = self.u.float(), self.v.float()
        for _ in range(steps):
            v = F.normalize(w.t() @ u, dim=0)
            u = F.normalize(w @ v, dim=0)
        self.u.copy_(u)
        self.v.copy_(v)

    def sigma_max(self) -> torch.Tensor:
        """uᵀWv with the stored vectors: differentiable w.r.t. W only."""
        # Clones: autograd saves u and v, and the next power-iteration step updates them in place.
        # fp32 even under autocast, which would otherwise run W @ v in bf16.
        with _no_autocast(self.weight):
            return torch.dot(self.u.float().clone(), self.weight.float() @ self.v.float().clone())

    def gain(self) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.power_iteration_()
        return self.gamma / self.sigma_max()

    def init_(self, target_std: float, sigma: float, generator: torch.Generator | None = None) -> None:
        # σReparam normalizes W, so the target std has no say: W ~ N(0, σ) as the paper does.
        _normal_(self.weight, sigma, generator)
        with torch.no_grad():
            self.u.normal_(0.0, 1.0, generator=generator)
            self.v.normal_(0.0, 1.0, generator=generator)
            self.u.copy_(F.normalize(self.u, dim=0))
            self.v.copy_(F.normalize(self.v, dim=0))
        self.power_iteration_(_INIT_ITERATIONS)
        with torch.no_grad():
            self.gamma.fill_(1.0 if self.gamma_init == 'one' else float(self.sigma_max()))

    def extra_repr(self) -> str:
        return super().extra_repr() + f', gamma_init={self.gamma_init}'
