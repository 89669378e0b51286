"""The init functions registered in llm-foundry's ``param_init_fns``.

Each is called as ``fn(module=m, n_layers=N, d_model=d, **init_config)`` on one module at a
time, like llm-foundry's own. Every reparameterized matrix gets std(W̄) = σ_i of the target: a
gated one stores W ~ N(0, σ) and a gain (WeSaR: α = σ_i/σ); a plain one stores N(0, σ_i).
σ comes from ``init_config`` by ``sigma_rule`` (a fixed ``sigma2``, or ``auto`` from ``lr``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from torch import nn

from wesar_foundry.models.init import init_module_
from wesar_foundry.core.sigma_rule import KEYS as SIGMA_KEYS, choose_sigma


# True while a model builds the stock modules it then replaces (wesar_mpt: MPT inits itself in its
# own constructor, before place_matrices swaps its matrices): their init is thrown away anyway.
_PLAIN_MATRICES_REPLACED = ContextVar('plain_matrices_replaced', default=False)


@contextmanager
def plain_matrices_replaced() -> Iterator[None]:
    """Within this block the init functions skip plain matrices (they are about to be replaced)."""
    token = _PLAIN_MATRICES_REPLACED.set(True)
    try:
        yield
    finally:
        _PLAIN_MATRICES_REPLACED.reset(token)


def wesar_(module: nn.Module, n_layers: int, d_model: int, target: str = 'he', **init_config: Any) -> None:
    """WeSaR's init: target ``he`` (default) or ``small``; σ from ``sigma2`` (default 4e-5, or ``auto``)."""
    if isinstance(module, (nn.Linear, nn.Embedding)) and not _PLAIN_MATRICES_REPLACED.get():
        # A stock model's matrix (llm-foundry's mpt_causal_lm, hf_causal_lm): these functions know
        # only the reparameterized matrices of our models, and would leave it uninitialized.
        raise ValueError(
            f'init_config.name (wesar_, he, small): {type(module).__name__} {tuple(module.weight.shape)} is a plain '
            'matrix of a model that is not wesar_llama, wesar_hf or wesar_mpt, and these init functions do not '
            'initialize it. Use model name wesar_llama, wesar_hf or wesar_mpt (reparam: none for the plain He or '
            'Small baseline), or one of llm-foundry\'s own inits (small_init_, kaiming_normal_, ...).')
    sigma = choose_sigma({k: v for k, v in init_config.items() if k in SIGMA_KEYS}, width=d_model).sigma
    init_module_(module, d_model=d_model, n_layers=n_layers, target=target, sigma=sigma)


def he(module: nn.Module, n_layers: int, d_model: int, **init_config: Any) -> None:
    """He-init targets (the paper's WeSaR target; with ``reparam: none``, the He baseline)."""
    wesar_(module, n_layers, d_model, **{**init_config, 'target': 'he'})


def small(module: nn.Module, n_layers: int, d_model: int, **init_config: Any) -> None:
    """Small-init targets, √(2/(5d)) and /√(2N) on W_o, W_d (the paper's main baseline)."""
    wesar_(module, n_layers, d_model, **{**init_config, 'target': 'small'})
