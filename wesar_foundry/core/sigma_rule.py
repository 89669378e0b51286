"""σ from the learning rate: ``init_config.sigma2: auto`` (core: imports nothing but the stdlib).

With Adam every stored element moves by about lr per step, so WeSaR's raw update ratio
‖ΔW‖/‖W‖ is about lr/σ for every matrix. ``auto`` keeps it at a reference operating point
(default: the paper's lr 1e-3 with σ² = 4e-5) by drawing the stored weights with

    σ = σ_ref · lr / lr_ref.

The gates need a rule too: α = σ_i/σ shrinks as 1/lr while Adam still moves it by about lr per
step, so its relative step would grow as lr². Each gate is therefore stored as α = s·a with a
fixed constant s = (lr_ref/lr)²: a then moves by lr, α by lr_ref²/lr, i.e. by the reference
relative step. Under Adam (its ε and gradient clipping aside) the matrices of a run at lr then follow exactly the
reference run's trajectory, W̄_lr(t) = W̄_ref(t): the weights are c = lr/lr_ref times larger,
the gates c times smaller. What the run's lr still sets is everything that is not a gated
matrix (norm gains, biases) and, through ``weight_decay``, the decay of W.

σ is a pure reparameterization (W·c with α/c computes the same function), so ``auto`` changes no
identity of the method: the function at init is the target init's, whatever lr is.

**Across width** (``ref_width``, optional): with it, the reference's σ² was measured at model width
``ref_width`` and σ² grows in proportion to the width, σ² = σ_ref² · (lr/lr_ref)² · (d/d_ref), so the
relative step lr/σ shrinks as 1/√d. That is μP's width scaling of Adam's hidden-matrix step (its
lr ∝ 1/d at init std ∝ 1/√d), which the coordinate check of a fixed relative step asks for
(docs/transfer.md, bench/README.md section 12). Without it the relative step is the same at every width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

AUTO = 'auto'
REFERENCE_LR = 1e-3
REFERENCE_SIGMA2 = 4e-5
DEFAULT_SIGMA2 = REFERENCE_SIGMA2
# The init_config keys this rule reads.
KEYS = ('sigma2', 'lr', 'ref_lr', 'ref_sigma2', 'ref_width', 'gate_scale')
_AUTO_ONLY = ('lr', 'ref_lr', 'ref_sigma2', 'ref_width')


@dataclass(frozen=True)
class SigmaChoice:
    """What ``init_config`` asks of the stored weights and the gates."""

    sigma2: float
    """σ²: the variance every stored (gated) weight is drawn with."""
    gate_scale: float
    """s: the fixed constant of each gate, α = s·a (1: the gate is its stored value)."""
    lr: float | None = None
    """The run's peak lr the choice was derived from (``sigma2: auto``), else None."""
    ref_lr: float = REFERENCE_LR
    """The reference operating point's lr."""
    ref_sigma2: float = REFERENCE_SIGMA2
    """The reference operating point's σ²."""
    ref_width: int | None = None
    """The model width the reference was measured at (σ² then ∝ width), or None: the same σ² at every width."""
    width: int | None = None
    """The model width σ² was chosen for (with ``ref_width``)."""

    @property
    def sigma(self) -> float:
        return math.sqrt(self.sigma2)

    @property
    def auto(self) -> bool:
        return self.lr is not None

    def describe(self) -> str:
        """One line for the log."""
        if not self.auto:
            return f'sigma2={self.sigma2:g} (sigma={self.sigma:.4g}), gate_scale={self.gate_scale:g}'
        at = '' if self.ref_width is None else f' at width {self.ref_width}, times width {self.width}/{self.ref_width}'
        return (f'sigma2: auto for lr {self.lr:g} -> sigma2={self.sigma2:.4g} (sigma={self.sigma:.4g}, '
                f'raw update ratio lr/sigma={self.lr / self.sigma:.4g}: lr {self.ref_lr:g}, sigma2 '
                f'{self.ref_sigma2:g}{at}); gates alpha = {self.gate_scale:.4g} * a')

    def as_dict(self) -> dict[str, Any]:
        """What the model's config stores (and the logs show)."""
        out = {'sigma2': self.sigma2, 'gate_scale': self.gate_scale, 'lr': self.lr,
               'ref_lr': self.ref_lr, 'ref_sigma2': self.ref_sigma2}
        return out if self.ref_width is None else {**out, 'ref_width': self.ref_width, 'width': self.width}


def _positive(value: Any, key: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f'{key}={value!r} must be a finite number > 0 ({hint})')
    return float(value)


def auto_sigma2(lr: float, ref_lr: float = REFERENCE_LR, ref_sigma2: float = REFERENCE_SIGMA2,
                width: int | None = None, ref_width: int | None = None) -> float:
    """σ² whose raw update ratio lr/σ equals the reference's lr_ref/σ_ref (times √(ref_width/width) with a width rule)."""
    return ref_sigma2 * (lr / ref_lr) ** 2 * (1.0 if ref_width is None else width / ref_width)


def auto_gate_scale(lr: float, ref_lr: float = REFERENCE_LR) -> float:
    """s = (lr_ref/lr)²: keeps each gate's relative step at the reference's (module doc)."""
    return (ref_lr / lr) ** 2


def choose_sigma(init_config: Mapping[str, Any], key: str = 'model.init_config', width: int | None = None) -> SigmaChoice:
    """Read ``sigma2`` (a number or ``auto``), ``lr``, ``ref_lr``, ``ref_sigma2``, ``ref_width`` and
    ``gate_scale`` from ``init_config``; raise a ValueError naming the key for anything wrong.
    ``width`` is the model's (d_model, hidden_size): needed only with ``ref_width``."""
    sigma2 = init_config.get('sigma2', DEFAULT_SIGMA2)
    gate_scale = init_config.get('gate_scale', AUTO)
    auto = sigma2 == AUTO
    if not auto:
        given = [k for k in _AUTO_ONLY if k in init_config]
        if given:
            raise ValueError(f'{key}.{given[0]} is only read with {key}.sigma2: auto (got sigma2={sigma2!r}); '
                             f'remove it, or set sigma2: auto')
        sigma2 = _positive(sigma2, f'{key}.sigma2', f'or "{AUTO}"; the paper uses 4e-5')
        choice = SigmaChoice(sigma2, 1.0)
    else:
        if 'lr' not in init_config:
            raise ValueError(f'{key}.sigma2: auto needs the run\'s peak learning rate as {key}.lr (the model '
                             'builder sees only model:); write lr: ${optimizer.lr}')
        lr = _positive(init_config['lr'], f'{key}.lr', 'the run\'s peak lr, e.g. ${optimizer.lr}')
        ref_lr = _positive(init_config.get('ref_lr', REFERENCE_LR), f'{key}.ref_lr', 'default 1e-3')
        ref_sigma2 = _positive(init_config.get('ref_sigma2', REFERENCE_SIGMA2), f'{key}.ref_sigma2', 'default 4e-5')
        ref_width = init_config.get('ref_width')
        if ref_width is not None:
            if isinstance(ref_width, bool) or not isinstance(ref_width, int) or ref_width < 1:
                raise ValueError(f'{key}.ref_width={ref_width!r} must be a whole number >= 1: the model width '
                                 f'(d_model, hidden_size) {key}.ref_sigma2 was tuned at')
            if width is None:
                raise ValueError(f'{key}.ref_width scales sigma2 with the model width, which is not known here '
                                 '(give the width, e.g. hidden_size in model.config_overrides)')
        choice = SigmaChoice(auto_sigma2(lr, ref_lr, ref_sigma2, width, ref_width), auto_gate_scale(lr, ref_lr), lr,
                             ref_lr, ref_sigma2, ref_width, width if ref_width is not None else None)
    if gate_scale != AUTO:
        gate_scale = _positive(gate_scale, f'{key}.gate_scale', f'or "{AUTO}": (ref_lr/lr)^2 with sigma2: auto, else 1')
        choice = replace(choice, gate_scale=gate_scale)
    return choice
