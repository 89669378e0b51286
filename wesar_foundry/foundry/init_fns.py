"""The init functions registered in llm-foundry's ``param_init_fns``.

Each is called as ``fn(module=m, n_layers=N, d_model=d, **init_config)`` on one module at a
time, like llm-foundry's own. Every reparameterized matrix gets std(W̄) = σ_i of the target: a
gated one stores W ~ N(0, σ) and a gain (WeSaR: α = σ_i/σ); a plain one stores N(0, σ_i).
σ comes from ``init_config`` by ``sigma_rule`` (a fixed ``sigma2``, or ``auto`` from ``lr``).
"""

from __future__ import annotations

from torch import nn

from wesar_foundry.model.init import init_module_
from wesar_foundry.sigma_rule import KEYS as SIGMA_KEYS, choose_sigma


def wesar_(module: nn.Module, n_layers: int, d_model: int, target: str = 'he', **init_config) -> None:
    """WeSaR's init: target ``he`` (default) or ``small``; σ from ``sigma2`` (default 4e-5, or ``auto``)."""
    sigma = choose_sigma({k: v for k, v in init_config.items() if k in SIGMA_KEYS}).sigma
    init_module_(module, d_model=d_model, n_layers=n_layers, target=target, sigma=sigma)


def he(module: nn.Module, n_layers: int, d_model: int, **init_config) -> None:
    """He-init targets (the paper's WeSaR target; with ``reparam: none``, the He baseline)."""
    wesar_(module, n_layers, d_model, **{**init_config, 'target': 'he'})


def small(module: nn.Module, n_layers: int, d_model: int, **init_config) -> None:
    """Small-init targets, √(2/(5d)) and /√(2N) on W_o, W_d (the paper's main baseline)."""
    wesar_(module, n_layers, d_model, **{**init_config, 'target': 'small'})
