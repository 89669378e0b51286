"""``gate_health_monitor``: warns (or stops) when a gate changes sign, shrinks, or its matrix's
effective update ratio exceeds a bound; also when an entry of a multipliers vector does. The rule
is in ``wesar_foundry.core.gate_health``."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from wesar_foundry.core.gate_health import (
    Gate, GateHealthRule, GateHealthTracker, Vector, read_gates, summary, vector_summary,
)
from wesar_foundry.core.options import takes_options
from wesar_foundry.core.ratios import clean_name, shard_offset, whole_vectors
from wesar_foundry.foundry.callbacks.update_ratio_monitor import (
    UpdateRatioMonitor, check_ratio_source, find_or_create, sum_over_ranks,
)
from wesar_foundry.reparam import MultiplierMatrix, ReparamMatrix

# The multipliers' per-row and per-column gates (reparam/multipliers.py), checked entry by entry.
VECTORS = ('row_mult', 'col_mult')

log = logging.getLogger(__name__)

ACTIONS = ('log', 'stop')
KEY = 'callbacks.gate_health_monitor'


class GateHealthError(RuntimeError):
    """Raised by ``gate_health_monitor`` with ``action: stop`` at the first warning, naming the
    matrix, its gate's value and the step."""


@dataclass
class GateHealthConfig(GateHealthRule):
    """Options of ``gate_health_monitor`` (every YAML key under it): the rule's (``sign_change``,
    ``min_fraction``, ``max_ratio``, ``vector_min_fraction``: ``wesar_foundry.core.gate_health.GateHealthRule``),
    then the callback's own."""

    interval: int = 10
    """Check after every ``interval``-th optimizer step (gates are read then; ratios when measured then)."""
    action: str = 'log'
    """'log' (warn and keep training) or 'stop' (raise GateHealthError at the first warning)."""
    ratios: str = 'auto'
    """Where the effective update ratios come from: 'auto' (update_ratio_monitor if the run has one that
    measures effective matrices, else measured here on checked steps, at the cost of that monitor), 'monitor'
    (only from update_ratio_monitor, on the steps it measures), 'none' (no ratio check)."""

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f'{KEY}.interval={self.interval!r} must be an integer >= 1')
        if self.action not in ACTIONS:
            raise ValueError(f'{KEY}.action={self.action!r}; allowed: {", ".join(ACTIONS)}')
        self.ratios = check_ratio_source(self.ratios, KEY)
        self.check(KEY)


class GateHealthMonitor(Callback):
    """Watches every scalar gate (WeSaR's α, σReparam's γ) against its initial value, every entry
    of the multipliers' row and column vectors against the vector's rms, and every measured
    matrix's effective update ratio.

    On a checked step (``BATCH_END`` of every ``interval``-th optimizer step, 1-based as in
    ``update_ratio_monitor``) it reads every gate, compares it with α₀ (the value it had when
    training started, saved in checkpoints), takes the effective update ratios of that step when
    they were measured, and applies the rule of ``wesar_foundry.core.gate_health``. Each onset of a
    condition is one warning: a Python log warning naming the step, the matrix, its gate's value
    and initial value, and what is wrong; with ``action: stop``, ``GateHealthError`` with the
    same text instead of going on.

    **Keys** logged on checked steps: ``gate_health/warnings`` (running count),
    ``gate_health/min_fraction`` (smallest α/α₀ over gates; negative once one changed sign),
    ``gate_health/sign_changes`` (gates whose sign differs from α₀ now), and, when ratios were
    measured, ``gate_health/max_ratio`` (largest effective update ratio); with multipliers vectors,
    ``gate_health/vector_min_fraction`` (smallest entry / its vector's rms; negative once one changed
    sign) and ``gate_health/vector_sign_changes`` (entries <= 0).

    **Sharding.** Under FSDP every gate's value comes from one all-reduce per check of a packed
    vector (two numbers per gate), the vectors are read whole with one more (their entries, plus
    one number each), and the ratios are the monitor's all-reduced ones, so every rank takes the
    same decision and ``action: stop`` stops all ranks alike.
    """

    @takes_options(GateHealthConfig, KEY)
    def __init__(self, config: GateHealthConfig) -> None:
        self.config = config
        self.tracker = GateHealthTracker(config)  # the config is the rule, with the callback's keys besides
        self.warnings: list[dict[str, Any]] = []
        self._gates: list[Gate] = []
        self._tensors: list[Any] = []
        self._scales: list[float] = []
        self._vectors: list[tuple[Vector, Any]] = []
        self._reduce = False
        self._monitor: UpdateRatioMonitor | None = None
        self._own_monitor = False

    def fit_start(self, state: State, logger: Logger) -> None:
        self._reduce = dist.get_world_size() > 1 and state.fsdp_enabled
        self._gates, self._tensors, self._scales, self._vectors = [], [], [], []
        for mname, module in state.model.named_modules():
            if not isinstance(module, ReparamMatrix):
                continue
            matrix = clean_name(mname)
            if isinstance(module, MultiplierMatrix):
                self._vectors += [(Vector(f'{matrix}.{n}', matrix), getattr(module, n)) for n in VECTORS
                                  if getattr(module, n) is not None and getattr(module, n).requires_grad]
            # WeSaR under sigma2: auto stores α = s·a (a replicated buffer s, as the checkpoint had it;
            # None when s = 1, and absent from the other reparameterizations).
            scale = getattr(module, 'gate_scale', None)
            for pname, p in module.named_parameters(recurse=False):
                # Scalar gates only: shape (1,) (a DTensor's shape is the global one). Per-row
                # gains (Weight Normalization's g) are no single scale to compare.
                if pname not in ('weight', 'bias', *VECTORS) and tuple(p.shape) == (1,) and p.requires_grad:
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
        # max_ratio 0 turns the ratio check off: nothing to measure.
        ratios = 'none' if self.config.max_ratio == 0 else self.config.ratios
        # A private monitor measures effective matrices only, on this monitor's checked steps.
        self._monitor, self._own_monitor = find_or_create(state, logger, ratios, 'gate_health_monitor',
                                                          'the max_ratio check is off', interval=self.config.interval,
                                                          history=1, effective_only=True)

    def _read(self, state: State) -> dict[str, float]:
        values = read_gates(self._tensors, sum_over_ranks(self._reduce))
        return {g.name: v * c for g, v, c in zip(self._gates, values, self._scales)}

    def _read_vectors(self) -> dict[Vector, Any]:
        # Whole on every rank (a vector's FSDP2 shards are split across ranks), so all decide alike.
        pieces = [(p, shard_offset(p), p.shape[0]) for _, p in self._vectors]
        return dict(zip((v for v, _ in self._vectors), whole_vectors(pieces, sum_over_ranks(self._reduce))))

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
        vectors = self._read_vectors() if self._vectors else {}
        ratios = self._ratios(state)
        found = self.tracker.update(step, self._gates, values, ratios, vectors)
        metrics = {'gate_health/warnings': self.tracker.count,
                   **{f'gate_health/{k}': v for k, v in summary(values, self.tracker.initial).items()},
                   **{f'gate_health/{k}': v for k, v in vector_summary(vectors.values()).items()}}
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
