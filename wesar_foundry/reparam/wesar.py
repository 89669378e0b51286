"""WeSaR: W̄ = α · W with one trainable scalar gate per matrix (Nishida et al. 2024)."""

from __future__ import annotations

import torch

from wesar_foundry.reparam.base import ReparamMatrix, new_gate


class WeSaRMatrix(ReparamMatrix):
    """W ~ N(0, σ) with the common σ; the gate α = σ_i/σ carries the role's scale.

    With Adam, α cancels out of W's update (∂L/∂W = α ∂L/∂W̄), so ‖ΔW‖ is set by the learning
    rate alone and ‖ΔW‖/‖W‖ is the same for every matrix.

    ``gate_scale`` s ≠ 1 stores the gate as α = s·a, so that Adam moves α by s·lr per step
    (``sigma_rule``: ``sigma2: auto``). s is then a persistent fp32 buffer: a checkpoint's a was
    trained with its s, so a resume restores both together.
    """

    def __init__(self, rows: int, cols: int, role: str, kind: str = 'linear', gate_scale: float = 1.0,
                 device=None, dtype=None):
        super().__init__(rows, cols, role, kind, device, dtype)
        # Shape (1,), not (): FSDP rejects 0-dim parameters.
        self.alpha = new_gate((1,), device)
        # s = 1 keeps the plain layout: the buffer is None, in no state dict.
        self.register_buffer('gate_scale', None if gate_scale == 1.0 else
                             torch.full((1,), float(gate_scale), dtype=torch.float32, device=device))
        self._initial_gate_scale = float(gate_scale)  # what init refills the buffer with

    def gain(self) -> torch.Tensor:
        return self.alpha if self.gate_scale is None else self.gate_scale * self.alpha

    @torch.no_grad()
    def init_gains_(self, target_std: float, sigma: float) -> None:
        if self.gate_scale is not None:
            self.gate_scale.fill_(self._initial_gate_scale)  # after to_empty it holds garbage
        self.alpha.fill_(target_std / sigma / self._initial_gate_scale)

    def extra_repr(self) -> str:
        return super().extra_repr() + ('' if self.gate_scale is None else f', gate_scale={self._initial_gate_scale:g}')
