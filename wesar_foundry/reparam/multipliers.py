"""Learnable multipliers: W̄ = α · diag(r̂) · W · diag(ĉ) (Velikanov et al. 2026, with WeSaR's α).

α is WeSaR's gate exactly (initialised to σ_i/σ, with its ``gate_scale``); a row vector r and a
column vector c, initialised to 1, free the row and column norms of W̄ as α frees its overall
scale. The op uses r̂ = r / rms(r) and ĉ = c / rms(c) (rms(v) = √mean(v²)), so W̄ does not change
when r or c is rescaled, by r·k and c/k or any other factor: the scale lives in α alone and the
vectors carry shape only, so the r·k, c/k symmetry gives them no direction to drift along. At init
r̂ = ĉ = 1 and W̄ = α·W, WeSaR's matrix, so the target init holds as it does for WeSaR.

``multipliers`` chooses which vectors exist: ``scalar`` (none: this is WeSaR), ``row``,
``column`` or ``row_column``. An embedding table (vocab, dim) has the same formula, rows being
token vectors. The vectors are fp32 masters, as α is.
"""

from __future__ import annotations

from typing import Optional

import torch

from wesar_foundry.core.ratios import unit_rms
from wesar_foundry.reparam.base import new_gate
from wesar_foundry.reparam.functional import multiplied_embedding, multiplied_linear, scaled_embedding, scaled_linear
from wesar_foundry.reparam.wesar import WeSaRMatrix

MULTIPLIERS = ('scalar', 'row', 'column', 'row_column')
# The vector parameters each choice adds besides ``alpha`` (and ``weight``).
VECTORS = {'scalar': (), 'row': ('row_mult',), 'column': ('col_mult',), 'row_column': ('row_mult', 'col_mult')}


class MultiplierMatrix(WeSaRMatrix):
    """W ~ N(0, σ) with the common σ; α = σ_i/σ as WeSaR's; the vectors r (rows,) and c (cols,) start at 1."""

    def __init__(self, rows: int, cols: int, role: str, kind: str = 'linear', *, multipliers: str,
                 gate_scale: float = 1.0, device=None, dtype=None):
        if multipliers not in MULTIPLIERS:
            raise ValueError(f'model.multipliers={multipliers!r} is not allowed; allowed values: {", ".join(MULTIPLIERS)}')
        super().__init__(rows, cols, role, kind, gate_scale, device, dtype)
        self.multipliers = multipliers
        # Absent vectors are registered as None: in no state dict, no optimizer, no FSDP shard.
        self.register_parameter('row_mult', new_gate((rows,), device) if 'row_mult' in VECTORS[multipliers] else None)
        self.register_parameter('col_mult', new_gate((cols,), device) if 'col_mult' in VECTORS[multipliers] else None)

    # ---- the two gains the op takes -----------------------------------------------------------

    def row_gain(self) -> torch.Tensor:
        """α·r̂ as a row gain, fp32, shape (rows, 1); α alone, shape (1,), without a row vector."""
        alpha = WeSaRMatrix.gain(self)
        return alpha if self.row_mult is None else alpha * unit_rms(self.row_mult).unsqueeze(1)

    def col_gain(self) -> Optional[torch.Tensor]:
        """ĉ, fp32, shape (cols,); None without a column vector."""
        return None if self.col_mult is None else unit_rms(self.col_mult)

    def gain(self) -> torch.Tensor:
        # The base contract W̄ = gain() ⊙ W holds only without a column vector. With one, a caller
        # that multiplies W by gain() would silently drop ĉ (a wrong export, a wrong ratio): refuse.
        if self.col_mult is not None:
            raise TypeError(f'multipliers={self.multipliers!r}: W̄ = α·diag(r̂)·W·diag(ĉ) is not gain() ⊙ weight; '
                            'use merged_weight()/effective_weight(), or row_gain() and col_gain()')
        return self.row_gain()

    # ---- W̄ -------------------------------------------------------------------------------------

    @torch.no_grad()
    def init_gains_(self, target_std: float, sigma: float) -> None:
        super().init_gains_(target_std, sigma)
        for v in (self.row_mult, self.col_mult):
            if v is not None:
                v.fill_(1.0)  # after to_empty it holds garbage

    def effective_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = self.weight.dtype if dtype is None else dtype
        w = self.row_gain().to(dtype) * self.weight.to(dtype)
        c = self.col_gain()
        return w if c is None else w * c.to(dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        w = self.row_gain().float() * self.weight.float()
        c = self.col_gain()
        return w if c is None else w.mul_(c.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Nothing weight- or activation-sized is saved for backward (reparam/functional.py). Without
        # a column vector the matrix is a row gain, and the row-gain ops serve it.
        row, col = self.row_gain(), self.col_gain()
        if self.kind == 'linear':
            return scaled_linear(x, self.weight, row) if col is None else multiplied_linear(x, self.weight, row, col)
        return scaled_embedding(x, self.weight, row) if col is None else multiplied_embedding(x, self.weight, row, col)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', multipliers={self.multipliers}'
