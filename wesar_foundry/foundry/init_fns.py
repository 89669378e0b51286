"""The init functions registered in llm-foundry's ``param_init_fns``.

Each is called as ``fn(module=m, n_layers=N, d_model=d, **init_config)`` on one module at a
time, like llm-foundry's own. Every reparameterized matrix gets std(W̄) = σ_i of the target: a
gated one stores W ~ N(0, σ) and a gain (WeSaR: α = σ_i/σ); a plain one stores N(0, σ_i).
"""

from __future__ import annotations

from torch import nn

from wesar_foundry.init_targets import check_sigma
from wesar_foundry.model.init import init_module_

DEFAULT_SIGMA2 = 4e-5


def wesar_(module: nn.Module, n_layers: int, d_model: int, target: str = 'he', sigma2: float = DEFAULT_SIGMA2,
           **kwargs) -> None:
    """WeSaR's init: target ``he`` (default) or ``small``, common σ² ``sigma2`` (default 4e-5)."""
    init_module_(module, d_model=d_model, n_layers=n_layers, target=target, sigma=check_sigma(sigma2))


def he(module: nn.Module, n_layers: int, d_model: int, sigma2: float = DEFAULT_SIGMA2, **kwargs) -> None:
    """He-init targets (the paper's WeSaR target; with ``reparam: none``, the He baseline)."""
    wesar_(module, n_layers, d_model, target='he', sigma2=sigma2)


def small(module: nn.Module, n_layers: int, d_model: int, sigma2: float = DEFAULT_SIGMA2, **kwargs) -> None:
    """Small-init targets, √(2/(5d)) and /√(2N) on W_o, W_d (the paper's main baseline)."""
    wesar_(module, n_layers, d_model, target='small', sigma2=sigma2)
