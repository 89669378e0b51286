"""σReparam (Zhai et al. 2023): W̄ = γ · W / σ_max(W), σ_max from one power-iteration step per
training forward (Miyato et al. 2018).

**One step per forward, whatever recomputes it.** The power-iteration step updates buffers, so a
module that runs twice for one forward would update them twice: activation checkpointing does
exactly that (non-reentrant: forward, then the recompute in backward; reentrant: a no-grad
forward, then the recompute), and the loss and the gradient would then see different σ. The
model therefore counts its training forwards with a ``ForwardClock`` (advanced outside any
checkpointed region) and each matrix steps once per tick: the first run of the forward steps,
a recompute finds the tick already seen and keeps the same vectors. A matrix with no clock
(standalone use) steps on every training forward with grad enabled.

The count lives in tensors (each matrix's ``ticks`` and ``stepped`` buffers) and the "once per
tick" test is branch-free (the step is computed, and kept only if due): read as Python ints,
``torch.compile`` specialized on their values and recompiled the model on every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wesar_foundry.reparam.base import ReparamMatrix, new_gate

GAMMA_INITS = ('one', 'spectral')

# Power-iteration steps at init, so that σ_max is accurate from the first forward.
_INIT_ITERATIONS = 100


_VECTOR_SEED = 0


def _whole(w: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor shard (FSDP2 at init, or outside the forward) is gathered;
    every rank must then call this together, as Composer's per-module init and the update-ratio
    monitor do."""
    return w.full_tensor() if hasattr(w, 'full_tensor') else w


def _no_autocast(t: torch.Tensor):
    return torch.autocast(t.device.type, enabled=False)


class ForwardClock:
    """Counts a model's training forwards on each of its σReparam matrices (their ``ticks``
    buffers: tensors that follow each module to its device and through FSDP)."""

    def __init__(self, matrices: list[SigmaReparamMatrix]) -> None:
        self.matrices = list(matrices)
        for m in self.matrices:
            m.clocked = True

    @torch.no_grad()
    def advance(self) -> None:
        for m in self.matrices:
            m.ticks.add_(1)

    @property
    def tick(self) -> int:
        """Training forwards counted so far (read back for tests and logs, never in the forward)."""
        return int(self.matrices[0].ticks) if self.matrices else 0


class SigmaReparamMatrix(ReparamMatrix):
    """The singular vectors ``u``, ``v`` are persistent buffers (checkpointed) and never
    differentiated through; σ_max = uᵀWv is differentiated w.r.t. W, as in the paper.

    In training mode each forward first runs one power-iteration step (once per ``clock`` tick,
    see the module doc) and stores the new vectors; in eval mode, and in ``gain()`` called from
    outside the forward, the stored vectors are used as they are, so eval and ``merge`` agree.

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
        # Training forwards counted by the model's clock, and the count at this matrix's last step.
        self.register_buffer('ticks', torch.zeros((), dtype=torch.int64, device=device), persistent=False)
        self.register_buffer('stepped', torch.zeros((), dtype=torch.int64, device=device), persistent=False)
        self.clocked = False

    @torch.no_grad()
    def power_iteration_(self, steps: int = 1) -> None:
        """Refine the stored singular vectors in place (no autograd), in fp32 even under autocast."""
        with _no_autocast(self.weight):
            self._power_iteration(steps)

    def _power_iteration(self, steps: int) -> None:
        u, v = self._stepped_vectors(steps)
        self.u.copy_(u)
        self.v.copy_(v)

    def _stepped_vectors(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = _whole(self.weight).float()
        u, v = self.u.float(), self.v.float()
        for _ in range(steps):
            v = F.normalize(w.t() @ u, dim=0)
            u = F.normalize(w @ v, dim=0)
        return u, v

    @torch.no_grad()
    def _step_once_per_tick_(self) -> None:
        due = self.ticks != self.stepped  # False in a recompute of this tick's forward
        with _no_autocast(self.weight):
            u, v = self._stepped_vectors(1)
        self.u.copy_(torch.where(due, u, self.u))
        self.v.copy_(torch.where(due, v, self.v))
        self.stepped.copy_(self.ticks)

    def sigma_max(self) -> torch.Tensor:
        """uᵀWv with the stored vectors: differentiable w.r.t. W only."""
        # Clones: autograd saves u and v, and the next power-iteration step updates them in place.
        # fp32 even under autocast, which would otherwise run W @ v in bf16.
        with _no_autocast(self.weight):
            return torch.dot(self.u.float().clone(), _whole(self.weight).float() @ self.v.float().clone())

    def gain(self) -> torch.Tensor:
        return _whole(self.gamma) / self.sigma_max()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if self.clocked:
                self._step_once_per_tick_()
            elif torch.is_grad_enabled():
                self.power_iteration_()
        return super().forward(x)

    @torch.no_grad()
    def init_gains_(self, target_std: float, sigma: float) -> None:
        # σReparam normalizes W, so the target std has no say: W ~ N(0, σ) as the paper does.
        # The starting vectors come from a fixed private generator, not the run's: every rank of a
        # sharded init (where u, v are replicated buffers) starts from the same vectors.
        self.ticks.zero_()  # buffers materialized from meta hold garbage until set
        self.stepped.zero_()
        start = torch.Generator().manual_seed(_VECTOR_SEED)
        self.u.copy_(F.normalize(torch.randn(self.u.shape[0], generator=start), dim=0))
        self.v.copy_(F.normalize(torch.randn(self.v.shape[0], generator=start), dim=0))
        self.power_iteration_(_INIT_ITERATIONS)
        self.gamma.fill_(1.0 if self.gamma_init == 'one' else float(self.sigma_max()))

    def extra_repr(self) -> str:
        return super().extra_repr() + f', gamma_init={self.gamma_init}'
