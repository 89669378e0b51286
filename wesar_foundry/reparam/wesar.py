"""WeSaR: W̄ = α · W with one trainable scalar gate per matrix (method doc §2)."""

from __future__ import annotations

import torch

from wesar_foundry.reparam.base import ReparamMatrix, new_gate


class WeSaRMatrix(ReparamMatrix):
    """W ~ N(0, σ) with the common σ; the gate α = σ_i/σ carries the role's scale.

    With Adam, α cancels out of W's update (∂L/∂W = α ∂L/∂W̄), so ‖ΔW‖ is set by the learning
    rate alone and ‖ΔW‖/‖W‖ is the same for every matrix.
    """

    def __init__(self, rows: int, cols: int, role: str, kind: str = 'linear', device=None, dtype=None):
        super().__init__(rows, cols, role, kind, device, dtype)
        # Shape (1,), not (): FSDP rejects 0-dim parameters.
        self.alpha = new_gate((1,), device)

    def gain(self) -> torch.Tensor:
        return self.alpha

    @torch.no_grad()
    def init_gains_(self, target_std: float, sigma: float) -> None:
        self.alpha.fill_(target_std / sigma)
