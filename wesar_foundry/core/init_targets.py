"""Target standard deviations per matrix role (core: imports nothing but the stdlib).

A *target* init asks each role for a std σ_i (``target_std``: He or Small init, with GPT-2's 1/√(2N) on
the residual branches W_o and W_d). Every reparameterization then reproduces W̄ ~ N(0, σ_i) at init,
whatever it stores.

The embedding is special for every target ("Spike No More"): its *output* has std 1, so its
effective target std is 1. A plain model stores the embedding with ``stored_embedding_std`` and
multiplies its output by the constant ``1 / stored_embedding_std`` (choice: the stored std is the
target's base std, √(1/d) for He and √(2/(5d)) for Small).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

ROLES = ('emb', 'q', 'k', 'v', 'o', 'up', 'gate', 'down', 'head')
TARGETS = ('he', 'small')

# Fused matrices (GPT-NeoX's and Phi-3's query_key_value/qkv_proj, Phi-3's gate_up_proj): row
# blocks of the roles named here, in one stored matrix. Their target is the parts' common target
# (``target_std``); every target here gives the parts of each the same std.
FUSED_ROLES = {'qkv': ('q', 'k', 'v'), 'gate_up': ('gate', 'up')}
MATRIX_ROLES = ROLES + tuple(FUSED_ROLES)

# Roles whose output is added to the residual stream: GPT-2-style inits shrink them by 1/√(2N).
RESIDUAL_ROLES = ('o', 'down')


def check_target(target: str, key: str = 'init_config.target') -> str:
    """Return ``target`` or raise a ValueError naming the key and the allowed values."""
    if target not in TARGETS:
        raise ValueError(f'{key}={target!r} is not a known init target; allowed: {", ".join(TARGETS)}')
    return target


def init_target_of(init_config: Mapping[str, Any]) -> str:
    """The target ``init_config`` asks for: the init function's name for ``he``/``small``, else its
    ``target`` (``he`` unless given)."""
    name = init_config.get('name', 'wesar_')
    return name if name in TARGETS else init_config.get('target', 'he')


def base_std(target: str, d_model: int) -> float:
    """The std a target gives an ordinary fan-in-d matrix (q, k, v, up, gate, head)."""
    check_target(target)
    return math.sqrt(1.0 / d_model) if target == 'he' else math.sqrt(2.0 / (5.0 * d_model))


def stored_embedding_std(target: str, d_model: int) -> float:
    """The std a plain (non-gated) model stores its embedding with; its output is scaled by 1/this."""
    return base_std(target, d_model)


def target_std(role: str, target: str, d_model: int, n_layers: int, fan_in: int | None = None) -> float:
    """σ_i: the std of the effective weight W̄ of ``role`` under ``target``.

    He: √(1/d) for q, k, v, up, gate and the head, √(1/d)/√(2N) for W_o, √(2/fan_in)/√(2N) for W_d.
    Small: √(2/(5d)) for every matrix, divided by √(2N) for W_o and W_d. The embedding: 1 (its output std).

    ``fan_in`` matters only for ``down`` under He (4d for the paper's GeLU MLP; the SwiGLU hidden
    size otherwise); it defaults to 4·d_model.
    """
    if role in FUSED_ROLES:
        return fused_target_std(role, target, d_model, n_layers)
    if role not in ROLES:
        raise ValueError(f'role={role!r} is not a known matrix role; allowed: {", ".join(MATRIX_ROLES)}')
    if role == 'emb':
        return 1.0
    base = base_std(target, d_model)
    if role not in RESIDUAL_ROLES:
        return base
    depth = math.sqrt(2.0 * n_layers)
    if target == 'small' or role == 'o':
        return base / depth
    # He for W_d: fan-in 4d, gain 2, then /√(2N): √(2 / (fan_in · 2N)).
    fan_in = 4 * d_model if fan_in is None else fan_in
    return math.sqrt(2.0 / fan_in) / depth


def fused_target_std(role: str, target: str, d_model: int, n_layers: int) -> float:
    """σ_i of a fused matrix (``qkv``, ``gate_up``): the common target of its parts.

    One gate per fused matrix then reproduces every part's target exactly. If a target ever gave
    the parts different stds this raises, naming them: such a matrix would need one gain per
    row block, not one gate.
    """
    parts = FUSED_ROLES[role]
    stds = {p: target_std(p, target, d_model, n_layers) for p in parts}
    if len(set(stds.values())) > 1:
        raise ValueError(f'fused role {role!r}: target {target!r} gives its parts different stds {stds}; '
                         'one gate per matrix cannot express that')
    return stds[parts[0]]
