"""The common interface of every reparameterized matrix.

Every method here is a *row gain*: the forward uses the effective weight W̄ = s ⊙ W, where the
gain s is either one scalar per matrix (shape ``(1,)``) or one scalar per row (shape
``(rows, 1)``), computed from the module's own parameters and buffers. That single form covers
WeSaR (s = α), Weight Normalization (s = g/‖w_row‖), σReparam (s = γ/σ_max(W)), Residual Scaling
and the plain embedding's "Spike No More" scale (s = a constant).

A matrix is either a linear map (``weight`` is ``(out, in)``) or an embedding table (``weight``
is ``(vocab, dim)``); rows are output units or token vectors respectively.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wesar_foundry.reparam.functional import scaled_embedding, scaled_linear

MATRIX_KINDS = ('linear', 'embedding')


class ReparamMatrix(nn.Module):
    """A weight matrix whose forward uses W̄ = gain() ⊙ weight."""

    def __init__(self, rows: int, cols: int, role: str, kind: str = 'linear', device=None, dtype=None):
        super().__init__()
        if kind not in MATRIX_KINDS:
            raise ValueError(f'kind={kind!r}; allowed: {", ".join(MATRIX_KINDS)}')
        self.role = role
        self.kind = kind
        self.weight = nn.Parameter(torch.empty(rows, cols, device=device, dtype=dtype))

    # nn.Linear-compatible names, so HF code that reads them keeps working.
    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def gain(self) -> torch.Tensor:
        """The fp32 gain s, shape (1,) or (rows, 1); differentiable w.r.t. the gates."""
        raise NotImplementedError

    def init_(self, target_std: float, sigma: float, generator: torch.Generator | None = None) -> None:
        """Initialize every parameter and buffer this module owns so that std(W̄) = target_std.

        ``sigma`` is the common std of stored weights for methods that store W ~ N(0, σ).
        Works on a freshly ``to_empty``-ed module, whole or a DTensor shard: it touches nothing
        outside itself. The weight is the only random draw; everything else follows from it
        (``init_gains_``), so a sharded init gives what a whole one gives for the same weight.
        """
        _normal_(self.weight, self.stored_std(target_std, sigma), generator)
        self.init_gains_(target_std, sigma)

    def stored_std(self, target_std: float, sigma: float) -> float:
        """The std the stored weight is drawn with: the common σ for the gated methods."""
        return sigma

    @torch.no_grad()
    def init_gains_(self, target_std: float, sigma: float) -> None:
        """Set everything but the weight (gates, gains, buffers) from the current weight."""

    def effective_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W̄ in ``dtype`` (default: the weight's), differentiable."""
        dtype = self.weight.dtype if dtype is None else dtype
        return self.gain().to(dtype) * self.weight.to(dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W̄ in fp32, computed from the fp32 masters: what ``merge`` stores."""
        return self.gain().float() * self.weight.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # W̄ is never saved for backward: see reparam/functional.py. The embedding gathers first,
        # then scales: cheaper than scaling the whole table.
        if self.kind == 'linear':
            return scaled_linear(x, self.weight, self.gain())
        return scaled_embedding(x, self.weight, self.gain())

    def extra_repr(self) -> str:
        return f'role={self.role}, kind={self.kind}, shape={tuple(self.weight.shape)}'


def _normal_(t: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        t.normal_(0.0, std, generator=generator)


class PlainMatrix(ReparamMatrix):
    """W̄ = c · W with a fixed, untrained constant c (1 for a plain matrix).

    The constant lives in a Python attribute, not a buffer, so mixed precision never rounds it
    and checkpoints never disagree with the config that sets it.
    """

    def __init__(self, rows: int, cols: int, role: str, kind: str = 'linear', scale: float = 1.0, device=None, dtype=None):
        super().__init__(rows, cols, role, kind, device, dtype)
        self.scale = float(scale)

    def gain(self) -> torch.Tensor:
        return torch.full((1,), self.scale, dtype=torch.float32, device=self.weight.device)

    def effective_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = self.weight if dtype is None else self.weight.to(dtype)
        return w if self.scale == 1.0 else w * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == 'linear':
            # A constant ≠ 1 goes through the gated op too: F.linear(x, c·W) would save c·W.
            return F.linear(x, self.weight.to(x.dtype)) if self.scale == 1.0 else scaled_linear(x, self.weight, self.scale)
        return F.embedding(x, self.weight) if self.scale == 1.0 else scaled_embedding(x, self.weight, self.scale)

    def stored_std(self, target_std: float, sigma: float) -> float:
        # The stored weight carries whatever of the target the constant does not.
        return target_std / self.scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f', scale={self.scale:.6g}'


def merge_module(module: ReparamMatrix) -> nn.Module:
    """A plain ``nn.Linear`` / ``nn.Embedding`` (fp32, no bias) holding the module's W̄."""
    w = module.merged_weight()
    rows, cols = w.shape
    if module.kind == 'linear':
        plain = nn.Linear(cols, rows, bias=False, device=w.device, dtype=torch.float32)
    else:
        plain = nn.Embedding(rows, cols, device=w.device, dtype=torch.float32)
    with torch.no_grad():
        plain.weight.copy_(w)
    return plain


def new_gate(shape: tuple[int, ...], device=None) -> nn.Parameter:
    """A gate parameter: fp32 always (the master copy), whatever dtype the weights use."""
    return nn.Parameter(torch.ones(shape, dtype=torch.float32, device=device))


def residual_scale(n_layers: int) -> float:
    """1/√(2N): the residual-branch factor of GPT-2-style inits and of Residual Scaling."""
    return 1.0 / math.sqrt(2.0 * n_layers)
