"""``gate_health_monitor``: warns (or stops) when a gate changes sign, shrinks, or its matrix's
effective update ratio exceeds a bound. The rule is in ``wesar_foundry.gate_health``."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from wesar_foundry.foundry.callbacks.update_ratio import UpdateRatioMonitor
from wesar_foundry.gate_health import Gate, GateHealthRule, GateHealthTracker, read_gates, summary
from wesar_foundry.options import from_options
from wesar_foundry.ratios import clean_name
from wesar_foundry.reparam import ReparamMatrix

log = logging.getLogger(__name__)

ACTIONS = ('log', 'stop')
RATIO_SOURCES = ('auto', 'monitor', 'none')
KEY = 'callbacks.gate_health_monitor'


class GateHealthError(RuntimeError):
    """Raised by ``gate_health_monitor`` with ``action: stop`` at the first warning, naming the
    matrix, its gate's value and the step."""


@dataclass
class GateHealthConfig:
    """Options of ``gate_health_monitor`` (every YAML key under it). Defaults: bench/gate_health.py."""

    interval: int = 10
    """Check after every ``interval``-th optimizer step (gates are read then; ratios when measured then)."""
    action: str = 'log'
    """'log' (warn and keep training) or 'stop' (raise GateHealthError at the first warning)."""
    sign_change: bool = True
    """Warn when a gate's sign differs from its initial sign."""
    min_fraction: float = 0.5
    """Warn when |α| falls below this fraction of its initial |α₀|; 0 turns the check off."""
    max_ratio: float = 1.0
    """Warn when a matrix's effective update ratio ‖ΔW̄‖/‖W̄‖ exceeds this; 0 turns the check off."""
    ratios: str = 'auto'
    """Where the effective update ratios come from: 'auto' (update_ratio_monitor if the run has one that
    measures effective matrices, else measured here on checked steps, at the cost of that monitor), 'monitor'
    (only from update_ratio_monitor, on the steps it measures), 'none' (no ratio check)."""

    def __post_init__(self) -> None:
        if self.ratios is False:  # YAML 1.1 reads an unquoted `off`/`no` as false
            self.ratios = 'none'
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f'{KEY}.interval={self.interval!r} must be an integer >= 1')
        if self.action not in ACTIONS:
            raise ValueError(f'{KEY}.action={self.action!r}; allowed: {", ".join(ACTIONS)}')
        if self.ratios not in RATIO_SOURCES:
            raise ValueError(f'{KEY}.ratios={self.ratios!r}; allowed: {", ".join(RATIO_SOURCES)}')
        self.rule().check(KEY)

    def rule(self) -> GateHealthRule:
        return GateHealthRule(sign_change=self.sign_change, min_fraction=self.min_fraction, max_ratio=self.max_ratio)


class GateHealthMonitor(Callback):
    """Watches every scalar gate (WeSaR's α, σReparam's γ) against its initial value, and every
    measured matrix's effective update ratio.

    On a checked step (``BATCH_END`` of every ``interval``-th optimizer step, 1-based as in
    ``update_ratio_monitor``) it reads every gate, compares it with α₀ (the value it had when
    training started, saved in checkpoints), takes the effective update ratios of that step when
    they were measured, and applies the rule of ``wesar_foundry.gate_health``. Each onset of a
    condition is one warning: a Python log warning naming the step, the matrix, its gate's value
    and initial value, and what is wrong; with ``action: stop``, ``GateHealthError`` with the
    same text instead of going on.

    **Keys** logged on checked steps: ``gate_health/warnings`` (running count),
    ``gate_health/min_fraction`` (smallest α/α₀ over gates; negative once one changed sign),
    ``gate_health/sign_changes`` (gates whose sign differs from α₀ now), and, when ratios were
    measured, ``gate_health/max_ratio`` (largest effective update ratio).

    **Sharding.** Under FSDP every gate's value comes from one all-reduce per check of a packed
    vector (two numbers per gate), and the ratios are the monitor's all-reduced ones, so every
    rank takes the same decision and ``action: stop`` stops all ranks alike.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.config = from_options(GateHealthConfig, kwargs, KEY)
        self.tracker = GateHealthTracker(self.config.rule())
        self.warnings: list[dict[str, Any]] = []
        self._gates: list[Gate] = []
        self._tensors: list[Any] = []
        self._scales: list[float] = []
        self._reduce = False
        self._monitor: UpdateRatioMonitor | None = None
        self._own_monitor = False

    def fit_start(self, state: State, logger: Logger) -> None:
        self._reduce = dist.get_world_size() > 1 and state.fsdp_enabled
        self._gates, self._tensors, self._scales = [], [], []
        for mname, module in state.model.named_modules():
            if not isinstance(module, ReparamMatrix):
                continue
            matrix = clean_name(mname)
            # WeSaR under sigma2: auto stores α = s·a (a replicated buffer s, as the checkpoint had it).
            scale = module.gate_scale if isinstance(getattr(module, 'gate_scale', None), torch.Tensor) else None
            for pname, p in module.named_parameters(recurse=False):
                # Scalar gates only: shape (1,) (a DTensor's shape is the global one). Per-row
                # gains (Weight Normalization's g) are no single scale to compare.
                if pname not in ('weight', 'bias') and tuple(p.shape) == (1,) and p.requires_grad:
                    self._gates.append(Gate(f'{matrix}.{pname}', matrix))
                    self._tensors.append(p)
                    self._scales.append(1.0 if scale is None or pname != 'alpha' else float(scale.item()))
        choice = getattr(state.model, 'sigma_choice', None)
        if choice is not None:
            logger.log_hyperparameters({f'wesar/{k}': v for k, v in choice.as_dict().items() if v is not None})
        # After a resume the loaded α₀ stay: only gates never seen take their current value.
        self.tracker.observe_initial(self._read(state))
        self._setup_ratios(state, logger)

    def _setup_ratios(self, state: State, logger: Logger) -> None:
        self._monitor, self._own_monitor = None, False
        if self.config.ratios == 'none' or self.config.max_ratio == 0:
            return
        found = [cb for cb in state.callbacks if isinstance(cb, UpdateRatioMonitor)
                 and cb.config.measure in ('effective', 'both')]
        if found:
            self._monitor = found[0]
        elif self.config.ratios == 'auto':
            # Private and silent: effective matrices only, on this monitor's checked steps.
            self._monitor = UpdateRatioMonitor(interval=self.config.interval, measure='effective', per_matrix='none',
                                               history=1)
            self._monitor.fit_start(state, logger)
            self._own_monitor = True
        else:
            log.warning('gate_health_monitor: ratios=monitor but the run has no update_ratio_monitor measuring '
                        'effective matrices; the max_ratio check is off')

    def _read(self, state: State) -> dict[str, float]:
        reduce = (lambda v: dist.all_reduce(v, reduce_operation='SUM')) if self._reduce else None
        values = read_gates(self._tensors, reduce)
        return {g.name: v * c for g, v, c in zip(self._gates, values, self._scales)}

    def after_train_batch(self, state: State, logger: Logger) -> None:
        if self._own_monitor:
            self._monitor.after_train_batch(state, logger)

    def _ratios(self, state: State) -> dict[str, float] | None:
        if self._monitor is None:
            return None
        m = self._monitor.measure(state)  # every rank, whatever the callback order
        if m is None:
            return None
        return {e.name: r for e, r in m.ratios.items() if e.kind == 'effective' and e.is_matrix}

    def batch_end(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        if step % self.config.interval:
            return
        values = self._read(state)
        ratios = self._ratios(state)
        found = self.tracker.update(step, self._gates, values, ratios)
        metrics = {'gate_health/warnings': self.tracker.count,
                   **{f'gate_health/{k}': v for k, v in summary(values, self.tracker.initial).items()}}
        finite = [r for r in (ratios or {}).values() if math.isfinite(r)]
        if finite:
            metrics['gate_health/max_ratio'] = max(finite)
        logger.log_metrics(metrics)
        for w in found:
            self.warnings.append(asdict(w))
            log.warning(w.describe())
        if found and self.config.action == 'stop':
            text = '; '.join(w.describe() for w in found)
            raise GateHealthError(f'{text} (gate_health_monitor.action=stop; lower the learning rate, give the gates '
                                  'their own smaller one, or set action: log to keep training)')

    def fit_end(self, state: State, logger: Logger) -> None:
        if self._own_monitor:
            self._monitor.fit_end(state, logger)

    # One JSON string: a sharded checkpoint restores only the keys a fresh monitor's state_dict
    # already has, so the initial gate values must not become keys of their own.
    def state_dict(self) -> dict[str, Any]:
        return {'state': json.dumps({'tracker': self.tracker.state_dict(), 'warnings': self.warnings})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sd = json.loads(state['state'])
        self.tracker.load_state_dict(sd['tracker'])
        self.warnings = list(sd['warnings'])
