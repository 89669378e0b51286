"""Residual Scaling (Noci et al. 2022): the residual branch is f(LN(x))/√(2N).

That equals a fixed, untrained scale 1/√(2N) on W_o and W_d; their stored init then drops the
1/√(2N) factor (``PlainMatrix.init_`` divides the target by the constant).
"""

from __future__ import annotations

from wesar_foundry.core.init_targets import RESIDUAL_ROLES
from wesar_foundry.reparam.base import PlainMatrix, residual_scale


class ResidualScaledMatrix(PlainMatrix):
    """A plain matrix that multiplies W by 1/√(2N) when its role writes to the residual stream."""

    def __init__(self, rows: int, cols: int, role: str, kind: str = 'linear', n_layers: int = 1, device=None, dtype=None):
        scale = residual_scale(n_layers) if role in RESIDUAL_ROLES else 1.0
        super().__init__(rows, cols, role, kind, scale=scale, device=device, dtype=dtype)
