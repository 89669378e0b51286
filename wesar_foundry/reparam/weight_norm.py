"""Weight Normalization (Salimans & Kingma 2016): w̄_r = g_r · w_r / ‖w_r‖, one gain per row."""

from __future__ import annotations

import torch

from wesar_foundry.reparam.base import ReparamMatrix, new_gate


class WeightNormMatrix(ReparamMatrix):
    """W ~ N(0, σ); the row gains g start at (σ_i/σ)·‖w_r‖ so that W̄ = (σ_i/σ)·W at init."""

    def __init__(self, rows: int, cols: int, role: str, kind: str = 'linear', device=None, dtype=None):
        super().__init__(rows, cols, role, kind, device, dtype)
        self.g = new_gate((rows,), device)

    def gain(self) -> torch.Tensor:
        # The norm is differentiated through: that is what makes it a normalization.
        norm = torch.linalg.vector_norm(self.weight.float(), dim=1)
        return (self.g / norm).unsqueeze(1)

    @torch.no_grad()
    def init_gains_(self, target_std: float, sigma: float) -> None:
        # Row norms of a DTensor shard are those of its own whole rows (FSDP shards dim 0).
        self.g.copy_(torch.linalg.vector_norm(self.weight.float(), dim=1) * (target_std / sigma))
