"""Reparameterized matrices in a built model: one factory (``new_matrix``), one placement (``place_matrices``).

Every family is built first as its own code builds it (transformers' Llama for ``wesar_llama``,
any supported HF decoder for ``wesar_hf``, llm-foundry's MPT for ``wesar_mpt``), with plain
``nn.Linear``/``nn.Embedding`` layers. ``place_matrices`` then replaces each one by the
reparameterized matrix of its role (``core.roles``: overrides first, then the family's table),
with its shape, bias, device, dtype and the attributes the family's code set on it. The module
tree and parameter names stay the stock ones, plus each method's gains (``….q_proj.alpha``), and
the stock forward calls the new modules as it called the old ones: no modeling code is copied.

What the registered init functions would not initialize is refused by name before any compute:
a matrix without a role, an embedding given a linear role (or the reverse), and any other module
holding parameters (MoE experts held as raw parameters, an unknown norm).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from wesar_foundry.core.init_targets import stored_embedding_std
from wesar_foundry.core.roles import RoleTable, assign_roles
from wesar_foundry.models.init import claims
from wesar_foundry.reparam import (
    MultiplierMatrix, PlainMatrix, ReparamMatrix, ResidualScaledMatrix, SigmaReparamMatrix, WeSaRMatrix, WeightNormMatrix,
)

# Attributes a family's code sets on its layers that still mean something on the replacement
# (llm-foundry's MPT marks the LM head as an FSDP unit with ``_fsdp_wrap``).
CARRIED_ATTRIBUTES = ('_fsdp_wrap',)


@dataclass(frozen=True)
class Reparameterization:
    """How one model stores its matrices: what ``new_matrix`` needs besides a matrix's shape and role."""

    reparam: str
    """wesar, none, weight_norm, sigma_reparam, residual_scaling or multipliers."""
    init_target: str
    """The target init (he or small): the plain embedding's constant depends on it."""
    d_model: int
    """Hidden size d."""
    n_layers: int
    """Decoder layers N (Residual Scaling's 1/√(2N))."""
    gamma_init: str = 'one'
    """σReparam's γ at init: one or spectral."""
    gate_scale: float = 1.0
    """WeSaR's constant s in α = s·a (``sigma_rule``); the multipliers' α too."""
    multipliers: Optional[str] = None
    """With reparam multipliers, the vectors besides α: scalar, row, column or row_column."""


@functools.cache
def with_bias(cls: type[ReparamMatrix]) -> type[ReparamMatrix]:
    """``cls`` plus a bias added after the reparameterized product: y = x W̄ᵀ + b.

    The gain scales W, not W x + b, so the merge keeps b as it is (stock layers with a bias: Qwen2's
    q/k/v, GPT-NeoX's every linear layer, MPT with ``no_bias: false``). The bias is stored in the
    weight's dtype and is initialized to 0 by the init functions, as transformers does.
    """
    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        self.bias = nn.Parameter(torch.zeros(self.weight.shape[0], device=self.weight.device, dtype=self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cls.forward(self, x) + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return cls.extra_repr(self) + ', bias=True'

    name = f'Biased{cls.__name__}'
    return type(name, (cls,), {'__init__': __init__, 'forward': forward, 'extra_repr': extra_repr,
                               '__module__': __name__, '__qualname__': name, '__doc__': with_bias.__doc__})


def new_matrix(how: Reparameterization, rows: int, cols: int, role: str, kind: str = 'linear', *, bias: bool = False,
               device=None, dtype=None) -> ReparamMatrix:
    """The (uninitialized) module ``how.reparam`` asks for, for one ``rows`` × ``cols`` matrix of ``role``;
    ``kind``: linear or embedding; ``bias``: a linear map with a bias."""
    kwargs: dict = {'device': device, 'dtype': dtype}
    if how.reparam == 'wesar':
        cls, kwargs['gate_scale'] = WeSaRMatrix, how.gate_scale
    elif how.reparam == 'multipliers':
        cls, kwargs['gate_scale'], kwargs['multipliers'] = MultiplierMatrix, how.gate_scale, how.multipliers
    elif how.reparam == 'weight_norm':
        cls = WeightNormMatrix
    elif how.reparam == 'sigma_reparam':
        cls, kwargs['gamma_init'] = SigmaReparamMatrix, how.gamma_init
    elif role == 'emb':
        # "Spike No More": a plain embedding's output is scaled to std 1 by a constant.
        cls, kwargs['scale'] = PlainMatrix, 1.0 / stored_embedding_std(how.init_target, how.d_model)
    elif how.reparam == 'residual_scaling':
        cls, kwargs['n_layers'] = ResidualScaledMatrix, how.n_layers
    else:
        cls = PlainMatrix
    if bias:
        if kind != 'linear':
            raise ValueError(f'a bias is for linear maps only, not {kind} (role {role})')
        cls = with_bias(cls)
    return cls(rows, cols, role, kind, **kwargs)


def place_matrices(model: nn.Module, how: Reparameterization, table: RoleTable,
                   overrides: Mapping[str, str] | None = None, *, model_name: str,
                   initialized: Callable[[nn.Module], bool] = claims) -> dict[str, str]:
    """Replace every ``nn.Linear``/``nn.Embedding`` of ``model`` by ``new_matrix`` for its role; return {name: role}.

    Roles come from ``overrides`` (``model.roles``), then ``table``. ``model_name`` (the registered
    model, e.g. ``wesar_mpt``) names the model in errors. ``initialized`` says whether the family's
    init initializes a module's own parameters (default: ``init.claims``); any module holding
    parameters it does not is refused by name once the matrices are placed.
    """
    matrices = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    roles = assign_roles(matrices, table, overrides, model=model_name)
    for name, old in matrices.items():
        role, embedding = roles[name], isinstance(old, nn.Embedding)
        if embedding != (role == 'emb'):
            raise ValueError(f'model.roles: {name} is an {type(old).__name__}, so its role must '
                             f'{"" if embedding else "not "}be emb (got {role!r})')
        rows, cols = old.weight.shape
        new = new_matrix(how, rows, cols, role, 'embedding' if embedding else 'linear',
                         bias=not embedding and old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
        for attr in CARRIED_ATTRIBUTES:
            if hasattr(old, attr):
                setattr(new, attr, getattr(old, attr))
        model.set_submodule(name, new)
    for name, module in model.named_modules():
        if list(module.parameters(recurse=False)) and not initialized(module):
            raise ValueError(f'{model_name}: {name} ({type(module).__name__}) holds parameters that no wesar-foundry '
                             'init function initializes; this architecture variant is not supported')
    return roles
