"""``update_ratio_monitor``: the exact per-matrix update ratio ‖W_t − W_{t−1}‖ / ‖W_{t−1}‖.

Works with any Composer model. For ours it also measures every effective matrix W̄ (gate × weight,
or whatever the reparameterization's gain is) and every gate; for others the effective matrix is
the stored one.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from wesar_foundry.core.options import takes_options
from wesar_foundry.core.ratios import (
    Entry, Item, aggregate, clean_name, collect_sums, matrix_key, multiplier_gains, ratio,
)
from wesar_foundry.core.roles import infer_layer, infer_role
from wesar_foundry.reparam import MultiplierMatrix, PlainMatrix, ReparamMatrix, WeSaRMatrix

log = logging.getLogger(__name__)

KEY = 'callbacks.update_ratio_monitor'
MEASURES = ('raw', 'effective', 'both')
PER_MATRIX = ('none', 'last_layer', 'all')
RATIO_SOURCES = ('auto', 'monitor', 'none')


@dataclass
class UpdateRatioConfig:
    """Options of ``update_ratio_monitor`` (every YAML key under it)."""

    interval: int = 10
    """Measure and log after every ``interval``-th optimizer step; the snapshot is taken only before those."""
    measure: str = 'both'
    """'raw' (stored parameters and gates), 'effective' (the matrices W̄ the forward uses), or 'both'."""
    per_matrix: str = 'last_layer'
    """Per-matrix keys: 'none', 'last_layer' (the last block: the paper's Figure 1) or 'all'."""
    include: str | None = None
    """Regex (re.search on the cleaned name): measure only the matching entries."""
    exclude: str | None = None
    """Regex (re.search on the cleaned name): skip the matching entries."""
    offload: bool = False
    """Keep the snapshot in CPU memory instead of on the parameters' device."""
    history: int = 4
    """How many recent measurements to keep (per-entry ratios) for readers such as ``loss_spike_monitor``."""

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f'{KEY}.interval={self.interval!r} must be an integer >= 1')
        if self.measure not in MEASURES:
            raise ValueError(f'{KEY}.measure={self.measure!r}; allowed: {", ".join(MEASURES)}')
        if self.per_matrix not in PER_MATRIX:
            raise ValueError(f'{KEY}.per_matrix={self.per_matrix!r}; allowed: {", ".join(PER_MATRIX)}')
        for name in ('include', 'exclude'):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ValueError(f'{KEY}.{name}={pattern!r} is not a valid regular expression: {e}') from None
        if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f'{KEY}.history={self.history!r} must be an integer >= 1')


@dataclass
class Measurement:
    """One logging step's result."""

    step: int
    """The optimizer step measured: ratios compare the weights after it with those before it."""
    ratios: dict[Entry, float]
    """Every measured entry's update ratio."""
    metrics: dict[str, float]
    """What was logged: aggregates and the chosen per-matrix keys."""

    def to_json(self) -> dict[str, Any]:
        ratios = [[e.name, e.kind, e.role, e.layer, e.is_matrix, r] for e, r in self.ratios.items()]
        return {'step': self.step, 'ratios': ratios, 'metrics': self.metrics}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> 'Measurement':
        return cls(int(d['step']), {Entry(*row[:5]): float(row[5]) for row in d['ratios']}, dict(d['metrics']))

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` matrices with the largest ratios: effective ones if measured, else raw."""
        kinds = {e.kind for e in self.ratios}
        kind = 'effective' if 'effective' in kinds else 'raw'
        rows = [(e.name, r) for e, r in self.ratios.items() if e.kind == kind and e.is_matrix and math.isfinite(r)]
        return sorted(rows, key=lambda x: -x[1])[:k]


class UpdateRatioMonitor(Callback):
    """Logs exact update ratios in fp32, aggregated per role, per layer and as a uniformity figure.

    On a logging step t (``t % interval == 0``) the monitor copies the parameters at
    ``AFTER_TRAIN_BATCH`` (W_{t−1}: gradients ready, optimizer not yet stepped) as fp32, and at
    ``BATCH_END`` compares them with W_t. Sums of squares are accumulated in fp64.

    **Memory:** one fp32 copy of this rank's parameters (its shard under FSDP), held from
    ``AFTER_TRAIN_BATCH`` to ``BATCH_END`` of logging steps only, freed in between; with
    ``offload: true`` that copy lives in CPU memory and each tensor visits the device once to be
    compared. Per-row gains of Weight Normalization / σReparam add one vector per matrix; the
    multipliers' gains (``reparam: multipliers``) one row and one column vector per matrix, in fp64.

    **Sharding:** under FSDP every rank sums over its shard and the sums of squares of all
    numerators and denominators are all-reduced in *one* collective per logging step, then
    divided (with replicated shards, HSDP, every sum grows by the same factor, which cancels).
    DDP and single-process runs hold whole parameters and do no collective. FSDP needs
    ``use_orig_params: true`` (Composer's default) so parameter names survive. Per-row gains
    (Weight Normalization) need no gathering: FSDP2 shards dim 0, so a rank holds whole rows and
    their gains. σReparam's spectral gain is one scalar from the whole matrix: its ``gain()``
    gathers the matrix (a collective every rank makes, in the same order) on measured steps.
    The multipliers' W̄ = α·diag(r̂)·W·diag(ĉ) needs α, all of r (for its rms) and all of c (whose
    shards do not follow W's rows): they are read whole on every rank with one more all-reduce, of
    O(rows + cols) numbers per matrix, at the snapshot and at the measurement.

    **Keys** (``K`` is ``raw``, ``effective`` or ``gate``; step t as above):

    - ``update_ratio/K/role/<role>``, ``update_ratio/K/layer/<i>``: pooled √(Σ‖ΔW‖²/Σ‖W‖²);
    - ``update_ratio/K/uniformity/max_over_min`` and ``.../log_std`` (std of ln ratios across
      matrices), ``update_ratio/K/max``/``min``; ``update_ratio/gate/max``;
    - ``update_ratio/K/matrix/<name>`` per ``per_matrix``. Raw and gate names are parameter
      names, effective names are module names. The multipliers' vectors ``row_mult``/``col_mult``
      are gates (‖Δr‖/‖r‖); their effective matrix is W̄ with the vectors.
    """

    @takes_options(UpdateRatioConfig, KEY)
    def __init__(self, config: UpdateRatioConfig) -> None:
        self.config = config
        self._include = re.compile(self.config.include) if self.config.include else None
        self._exclude = re.compile(self.config.exclude) if self.config.exclude else None
        self._items: list[Item] | None = None
        self._reduce = False
        self._snapshot: dict[int, torch.Tensor] = {}
        self._snap_gains: dict[int, Any] = {}
        self._snap_step: int | None = None
        self._current: Measurement | None = None
        self._logged_step: int | None = None
        self._selected: set[Entry] = set()
        self.history: deque[Measurement] = deque(maxlen=self.config.history)

    # ---- what to measure -------------------------------------------------------------------

    def _wanted(self, name: str) -> bool:
        if self._include is not None and not self._include.search(name):
            return False
        return not (self._exclude is not None and self._exclude.search(name))

    def _plan(self, state: State) -> list[Item]:
        cfg = self.config
        raw = cfg.measure in ('raw', 'both')
        eff = cfg.measure in ('effective', 'both')
        sharded = self._reduce
        items: list[Item] = []
        owned: set[int] = set()
        for mname, module in state.model.named_modules():
            if not isinstance(module, ReparamMatrix):
                continue
            name = clean_name(mname)
            layer = infer_layer(name)
            for pname, p in module.named_parameters(recurse=False):
                owned.add(id(p))
                if not p.requires_grad:
                    continue
                full = f'{name}.{pname}'
                if pname == 'weight':
                    e = Entry(full, 'raw', module.role, layer, True)
                elif pname == 'bias':  # a wesar_hf layer's bias: a stored vector, not a gate
                    e = Entry(full, 'raw', module.role, layer, False)
                else:
                    e = Entry(full, 'gate', module.role, layer, False)
                if raw and self._wanted(full):
                    items.append(Item(e, 'raw', p))
            if not eff or not self._wanted(name):
                continue
            e = Entry(name, 'effective', module.role, layer, True)
            if isinstance(module, PlainMatrix):
                # A constant gain cancels out of the ratio: W̄'s ratio is W's.
                items.append(Item(e, 'raw', module.weight))
            elif isinstance(module, MultiplierMatrix) and (module.row_mult is not None or module.col_mult is not None):
                items.append(Item(e, 'multiplied', module.weight, module=module))
            elif isinstance(module, WeSaRMatrix):  # multipliers: scalar is WeSaR
                items.append(Item(e, 'scaled', module.weight, gate=module.alpha))
            else:
                items.append(Item(e, 'gained', module.weight, module=module))
        seen: set[int] = set()
        for pname, p in state.model.named_parameters():
            if id(p) in owned or id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            name = clean_name(pname)
            role, layer = infer_role(name), infer_layer(name)
            is_matrix = p.dim() >= 2 or (sharded and name.endswith('.weight') and role is not None)
            if raw and self._wanted(name):
                items.append(Item(Entry(name, 'raw', role, layer, is_matrix), 'raw', p))
            mod = name[:-len('.weight')] if name.endswith('.weight') else name
            if eff and is_matrix and self._wanted(mod):
                items.append(Item(Entry(mod, 'effective', role, layer, True), 'raw', p))
        if not items:
            raise ValueError(f'{KEY}: no parameter matches include/exclude '
                             f'(include={self.config.include!r}, exclude={self.config.exclude!r})')
        return items

    def _per_matrix_entries(self, entries: list[Entry]) -> set[Entry]:
        mode = self.config.per_matrix
        if mode == 'none':
            return set()
        if mode == 'all':
            return set(entries)
        layers = [e.layer for e in entries if e.layer is not None]
        last = max(layers) if layers else None
        return {e for e in entries if e.layer is not None and e.layer == last}

    # ---- events ----------------------------------------------------------------------------

    def fit_start(self, state: State, logger: Logger) -> None:
        self._reduce = dist.get_world_size() > 1 and state.fsdp_enabled
        self._items = self._plan(state)
        self._selected = self._per_matrix_entries([it.entry for it in self._items])

    def is_log_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is measured."""
        return step % self.config.interval == 0

    @torch.no_grad()
    def after_train_batch(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch) + 1  # the step the optimizer is about to take
        if not self.is_log_step(step):
            return
        device = 'cpu' if self.config.offload else None
        snap: dict[int, torch.Tensor] = {}
        gains: dict[int, Any] = {}
        for it in self._items:
            for t in (it.weight, it.gate):
                if t is not None and id(t) not in snap:
                    snap[id(t)] = _copy(t, device)
            if it.how == 'gained' and id(it.module) not in gains:
                # no_grad: σReparam runs no power-iteration step, so this is the gain the forward used.
                gains[id(it.module)] = it.module.gain().detach().float().clone()
        multiplied = list({id(it.module): it.module for it in self._items if it.how == 'multiplied'}.values())
        if multiplied:
            gains.update(multiplier_gains(multiplied, sum_over_ranks(self._reduce)))
        self._snapshot, self._snap_gains, self._snap_step = snap, gains, step

    def measure(self, state: State) -> Measurement | None:
        """This step's measurement (computed once, on first request, on every rank), else None."""
        step = int(state.timestamp.batch)
        if self._current is not None and self._current.step == step:
            return self._current
        if self._snap_step != step:
            return None
        sums = collect_sums(self._items, self._snapshot, self._snap_gains, sum_over_ranks(self._reduce))
        self._snapshot, self._snap_gains, self._snap_step = {}, {}, None
        ratios = {e: ratio(n, d) for e, (n, d) in sums.items()}
        metrics = aggregate(sums)
        for e in self._selected:
            if e in ratios:
                metrics[matrix_key(e)] = ratios[e]
        self._current = Measurement(step, ratios, metrics)
        self.history.append(self._current)
        return self._current

    def held_bytes(self) -> int:
        """Bytes of snapshot held right now (0 outside AFTER_TRAIN_BATCH → BATCH_END of logging steps)."""
        gains = [g for v in self._snap_gains.values() for g in (v if isinstance(v, tuple) else (v,))]
        return sum(t.numel() * t.element_size() for t in list(self._snapshot.values()) + gains if t is not None)

    def batch_end(self, state: State, logger: Logger) -> None:
        m = self.measure(state)
        if m is not None and self._logged_step != m.step:
            logger.log_metrics(m.metrics)
            self._logged_step = m.step

    def fit_end(self, state: State, logger: Logger) -> None:
        self._snapshot, self._snap_gains = {}, {}

    # One JSON string: a sharded checkpoint restores only the keys a fresh monitor's state_dict
    # already has, so run-dependent structure must not become keys.
    def state_dict(self) -> dict[str, Any]:
        return {'history': json.dumps([m.to_json() for m in self.history])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(Measurement.from_json(d) for d in json.loads(state['history']))


def sum_over_ranks(sharded: bool):
    """An in-place SUM all-reduce for the core readers when parameters are sharded, else None (nothing to sum)."""
    return (lambda v: dist.all_reduce(v, reduce_operation='SUM')) if sharded else None


def _copy(t: torch.Tensor, device: str | None) -> torch.Tensor:
    t = t.detach()
    if hasattr(t, 'to_local'):
        t = t.to_local()
    if device is not None:
        return t.to(device=device, dtype=torch.float32, copy=True)
    return t.to(dtype=torch.float32, copy=True)


def check_ratio_source(ratios: str | bool, key: str) -> str:
    """The ``ratios`` option of a callback that reads update ratios (``key``: its YAML path), checked."""
    if ratios is False:  # YAML 1.1 reads an unquoted `off`/`no` as false
        return 'none'
    if ratios not in RATIO_SOURCES:
        raise ValueError(f'{key}.ratios={ratios!r}; allowed: {", ".join(RATIO_SOURCES)}')
    return ratios


def find_or_create(state: State, logger: Logger, ratios: str, reader: str, without: str, *, interval: int,
                   history: int, effective_only: bool = False) -> tuple[UpdateRatioMonitor | None, bool]:
    """The ``update_ratio_monitor`` the callback ``reader`` takes its ratios from, and whether it is its own.

    ``ratios`` is the reader's option: 'none' gives none; otherwise the run's first monitor (one
    measuring effective matrices, with ``effective_only``). When the run has none, 'auto' builds a
    private one measuring every ``interval``-th step and keeping ``history`` measurements, started
    here: the reader forwards it ``after_train_batch`` and ``fit_end`` (it is not in the run's
    callbacks, so it never logs); 'monitor' warns, naming what the reader does ``without``.
    """
    if ratios == 'none':
        return None, False
    found = [cb for cb in state.callbacks
             if isinstance(cb, UpdateRatioMonitor) and not (effective_only and cb.config.measure == 'raw')]
    if found:
        return found[0], False
    what = 'update_ratio_monitor measuring effective matrices' if effective_only else 'update_ratio_monitor'
    if ratios == 'monitor':
        log.warning(f'{reader}: ratios=monitor but the run has no {what}; {without}')
        return None, False
    monitor = UpdateRatioMonitor(interval=interval, measure='effective' if effective_only else 'both',
                                 per_matrix='none', history=history)
    monitor.fit_start(state, logger)
    return monitor, True
