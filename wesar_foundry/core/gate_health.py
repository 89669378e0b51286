"""What counts as an unhealthy gate (core: imports torch only), for ``gate_health_monitor``.

Adam moves a scalar gate α by about the learning rate per step, whatever its size. A gate that
starts small against the learning rate can therefore shrink to nothing or cross zero within a
few hundred steps; as ‖W̄‖ = |α|·‖W‖ nears zero, the effective update ratio ‖ΔW̄‖/‖W̄‖ explodes.

**Rule.** With α₀ a gate's value when it was first seen (the start of training, kept across
resumes), a matrix is unhealthy at a checked step when any of

- ``sign``:   sign(α) ≠ sign(α₀)  (α = 0 counts as a change: W̄ = 0 has lost its scale);
- ``shrink``: |α| < min_fraction · |α₀|;
- ``ratio``:  its effective update ratio ‖ΔW̄‖/‖W̄‖ > max_ratio  (any measured matrix, gated or not)

holds. The three are independent conditions (a gate on its way through zero first shrinks, then
changes sign: two warnings). A *warning* is the onset of a condition: it is reported on the first
checked step where it holds and not again while it keeps holding; once it clears, a new onset
warns again. Non-finite values satisfy no condition (the divergence stop of
``loss_spike_monitor`` handles them).

**Vectors** (``reparam: multipliers``: a row vector r and a column vector c per matrix, W̄ =
α·diag(r̂)·W·diag(ĉ) with r̂ = r/rms(r)) are gates too, one per entry, read as the forward reads
them, relative to their rms: r̂_i starts at 1 (r = 1), and row i of W̄ nears zero as r̂_i does,
whatever the scale of r. For each vector, with the same onset semantics:

- ``sign``:   some entry r_i ≤ 0 (r starts at 1);
- ``shrink``: some entry |r_i| < vector_min_fraction · rms(r) (a row or column collapsing).

One warning per vector and condition names the vector, how many of its entries meet it and the
worst one as a gate, ``<matrix>.row_mult[i]`` (or ``col_mult[j]``), with its value r̂_i.

**Reading a gate under sharding.** A gate has shape (1,); FSDP2 gives its one element to one rank
(the others hold an empty shard), HSDP to one rank per replica. Each rank contributes
``[Σ local, holders]`` per gate to one packed vector; after one all-reduce (SUM) the value is
Σ/holders on every rank, so every rank decides alike (the same trick as ``ratios.scaled_sums``).
The vectors are read whole on every rank the same way (``ratios.whole_vectors``: one more all-reduce).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from wesar_foundry.core.ratios import local_fp32, unit_rms

SIGN, SHRINK, RATIO = 'sign', 'shrink', 'ratio'


@dataclass
class GateHealthRule:
    """The rule's thresholds (also keys of ``gate_health_monitor``; defaults from bench/gate_health.py)."""

    sign_change: bool = True
    """Warn when a gate's sign differs from its initial sign."""
    min_fraction: float = 0.5
    """Warn when |α| < min_fraction · |α₀|; 0 turns this check off."""
    max_ratio: float = 1.0
    """Warn when a matrix's effective update ratio ‖ΔW̄‖/‖W̄‖ exceeds this; 0 turns this check off."""
    vector_min_fraction: float = 0.1
    """Warn when an entry of a multipliers vector falls below this fraction of the vector's rms; 0 turns it off."""

    def check(self, key: str = 'gate_health_monitor') -> None:
        """Raise a ValueError naming the key when a value is out of range."""
        if not isinstance(self.sign_change, bool):
            raise ValueError(f'{key}.sign_change={self.sign_change!r} must be true or false')
        v = self.min_fraction
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f'{key}.min_fraction={v!r} must be a number in [0, 1) (0 turns the check off)')
        v = self.max_ratio
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
            raise ValueError(f'{key}.max_ratio={v!r} must be a finite number >= 0 (0 turns the check off)')
        v = self.vector_min_fraction
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f'{key}.vector_min_fraction={v!r} must be a number in [0, 1) (0 turns the check off)')


@dataclass(frozen=True)
class Gate:
    """One scalar gate and the matrix it scales."""

    name: str
    """The gate parameter's (cleaned) name, e.g. ``model.layers.7.mlp.down_proj.alpha``."""
    matrix: str
    """The matrix's (cleaned) module name, as ``update_ratio_monitor`` names effective matrices."""


@dataclass(frozen=True)
class Vector:
    """One vector of per-row or per-column gates (``row_mult``, ``col_mult``) and the matrix it scales."""

    name: str
    """The vector parameter's (cleaned) name, e.g. ``model.layers.7.mlp.down_proj.row_mult``."""
    matrix: str
    """The matrix's (cleaned) module name."""


@dataclass(frozen=True)
class GateWarning:
    """The onset of one unhealthy condition."""

    condition: str
    """'sign', 'shrink' or 'ratio'."""
    step: int
    """The optimizer step after which it was seen (1-based)."""
    matrix: str
    """The matrix's name."""
    gate: str | None
    """The gate's name; None for a matrix without a scalar gate (ratio warnings only)."""
    value: float
    """The gate's value at ``step`` (nan without a gate)."""
    initial: float
    """The gate's initial value α₀ (nan without a gate)."""
    ratio: float
    """The matrix's effective update ratio at ``step`` (nan when not measured at that step)."""
    bound: float
    """The threshold crossed: min_fraction (vector_min_fraction for a vector), max_ratio, or 0 for a sign change."""
    vector: str | None = None
    """For a vector's warning: the vector's name (``gate`` is then its worst entry, ``value`` that entry / rms)."""
    entries: int = 0
    """For a vector's warning: how many of its entries meet the condition."""
    length: int = 0
    """For a vector's warning: its number of entries."""

    def describe(self) -> str:
        """One line: the step, the matrix, its gate and what is wrong."""
        if self.vector is not None:
            head = f'gate health at step {self.step}: matrix {self.matrix}, vector {self.vector}: '
            if self.condition == SIGN:
                what = f'{self.entries} of {self.length} entries are <= 0 (initial 1)'
            else:
                what = f'{self.entries} of {self.length} entries fell below vector_min_fraction {self.bound:g} of its rms'
            return head + what + f'; the worst, {self.gate}, is {self.value:.4g} of the rms'
        gate = (f'gate {self.gate} = {self.value:.4g} (initial {self.initial:.4g})' if self.gate is not None
                else 'no scalar gate')
        if self.condition == SIGN:
            what = 'the gate changed sign'
        elif self.condition == SHRINK:
            what = (f'|gate| fell below min_fraction {self.bound:g} of its initial value '
                    f'({abs(self.value / self.initial):.3g} of it)')
        else:
            what = f'effective update ratio {self.ratio:.4g} > max_ratio {self.bound:g}'
        return f'gate health at step {self.step}: matrix {self.matrix}, {gate}: {what}'


def conditions(rule: GateHealthRule, value: float, initial: float, ratio: float) -> list[str]:
    """Which conditions hold for one matrix (``value``/``initial`` nan when it has no gate,
    ``ratio`` nan when it was not measured)."""
    out = []
    gated = math.isfinite(value) and math.isfinite(initial) and initial != 0
    if gated and rule.sign_change and (value == 0 or (value > 0) != (initial > 0)):
        out.append(SIGN)
    if gated and rule.min_fraction > 0 and abs(value) < rule.min_fraction * abs(initial):
        out.append(SHRINK)
    if rule.max_ratio > 0 and math.isfinite(ratio) and ratio > rule.max_ratio:
        out.append(RATIO)
    return out


def _relative(values: torch.Tensor) -> torch.Tensor | None:
    """values / rms(values) in fp64 (what the forward multiplies by); None when the rms is not finite."""
    rel = unit_rms(values.double().reshape(-1))
    return rel if rel.numel() and math.isfinite(float(values.double().square().mean())) else None


@torch.no_grad()
def vector_conditions(rule: GateHealthRule, values: torch.Tensor) -> dict[str, tuple[int, int, float]]:
    """Which conditions hold for one whole vector: ``{condition: (entries meeting it, the worst
    entry's index, its value / rms)}``. Non-finite entries meet none (nor does any entry when the rms is not finite)."""
    rel = _relative(values)
    out = {}
    if rel is None:
        return out
    finite = torch.isfinite(rel)
    checks = []
    if rule.sign_change:
        checks.append((SIGN, rel <= 0, rel))
    if rule.vector_min_fraction > 0:
        checks.append((SHRINK, rel.abs() < rule.vector_min_fraction, rel.abs()))
    for condition, hit, badness in checks:
        hit = hit & finite
        if hit.any():
            i = int(torch.where(hit, badness, torch.inf).argmin())  # the lowest (sign), the smallest |·| (shrink)
            out[condition] = (int(hit.sum()), i, float(rel[i]))
    return out


@dataclass
class GateHealthTracker:
    """Online: ``update`` once per checked step. Its state (initial values, the conditions that
    hold now, the warning count) is plain data."""

    rule: GateHealthRule = field(default_factory=GateHealthRule)
    initial: dict[str, float] = field(default_factory=dict)
    """α₀ by gate name."""
    active: set[tuple[str, str]] = field(default_factory=set)
    """(matrix, condition) pairs that held at the last checked step."""
    count: int = 0
    """Warnings so far (onsets)."""

    def observe_initial(self, values: Mapping[str, float]) -> None:
        """Record α₀ of gates seen for the first time; gates already known keep theirs."""
        for name, v in values.items():
            self.initial.setdefault(name, float(v))

    def update(self, step: int, gates: Sequence[Gate], values: Mapping[str, float],
               ratios: Mapping[str, float] | None = None,
               vectors: Mapping[Vector, torch.Tensor] | None = None) -> list[GateWarning]:
        """The warnings (onsets) of this step. ``values``: gate name → α now; ``ratios``: matrix
        name → effective update ratio at this step, or None when none was measured (the ratio
        conditions then keep their previous state); ``vectors``: each vector → its whole values now."""
        self.observe_initial(values)
        gate_of = {g.matrix: g for g in gates}
        matrices = list(dict.fromkeys([g.matrix for g in gates] + list(ratios or {})))
        now: set[tuple[str, str]] = set()
        warnings = []
        for m in matrices:
            g = gate_of.get(m)
            value = values.get(g.name, math.nan) if g is not None else math.nan
            initial = self.initial.get(g.name, math.nan) if g is not None else math.nan
            r = ratios.get(m, math.nan) if ratios is not None else math.nan
            for c in conditions(self.rule, value, initial, r):
                now.add((m, c))
                if (m, c) in self.active:
                    continue
                bound = {SIGN: 0.0, SHRINK: self.rule.min_fraction, RATIO: self.rule.max_ratio}[c]
                warnings.append(GateWarning(c, step, m, g.name if g is not None else None, value, initial, r, bound))
        # A vector's conditions are on record under its own name (matrix names are no parameter names).
        for v, vals in (vectors or {}).items():
            for c, (entries, i, rel) in vector_conditions(self.rule, vals).items():
                now.add((v.name, c))
                if (v.name, c) in self.active:
                    continue
                bound = 0.0 if c == SIGN else self.rule.vector_min_fraction
                warnings.append(GateWarning(c, step, v.matrix, f'{v.name}[{i}]', rel, 1.0, math.nan, bound,
                                            vector=v.name, entries=entries, length=vals.numel()))
        if ratios is None:  # not measured this step: ratio conditions stay as they were
            now |= {a for a in self.active if a[1] == RATIO}
        self.active = now
        self.count += len(warnings)
        return warnings

    def state_dict(self) -> dict[str, Any]:
        return {'initial': dict(self.initial), 'active': sorted(list(a) for a in self.active), 'count': self.count}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        self.initial = {str(k): float(v) for k, v in sd['initial'].items()}
        self.active = {(str(m), str(c)) for m, c in sd['active']}
        self.count = int(sd['count'])


def summary(values: Mapping[str, float], initial: Mapping[str, float]) -> dict[str, float]:
    """``min_fraction`` (the smallest α/α₀ over gates; negative after a sign change) and
    ``sign_changes`` (how many gates have the opposite sign to α₀ or are 0), over finite gates."""
    fractions = [values[n] / initial[n] for n in values
                 if n in initial and initial[n] != 0 and math.isfinite(values[n]) and math.isfinite(initial[n])]
    if not fractions:
        return {}
    return {'min_fraction': min(fractions), 'sign_changes': float(sum(f <= 0 for f in fractions))}


@torch.no_grad()
def vector_summary(vectors: Iterable[torch.Tensor]) -> dict[str, float]:
    """``vector_min_fraction`` (the smallest entry / its vector's rms, over all vectors; negative
    once one changed sign) and ``vector_sign_changes`` (entries <= 0), over finite entries."""
    rels = [r[torch.isfinite(r)] for r in map(_relative, vectors) if r is not None]
    rels = [r for r in rels if r.numel()]
    if not rels:
        return {}
    return {'vector_min_fraction': min(float(r.min()) for r in rels),
            'vector_sign_changes': float(sum(int((r <= 0).sum()) for r in rels))}


@torch.no_grad()
def read_gates(tensors: Iterable[torch.Tensor],
               all_reduce: Callable[[torch.Tensor], None] | None = None) -> list[float]:
    """The value of each scalar gate, from this rank's pieces (one element or empty).

    With ``all_reduce`` (an in-place SUM over ranks) the packed ``[Σ local, holders]`` pairs of
    all gates go through it in one call; a gate no rank holds reads nan.
    """
    parts = []
    for t in tensors:
        local = local_fp32(t).reshape(-1)
        parts.append(torch.stack([torch.sum(local, dtype=torch.float64),
                                  torch.tensor(float(local.numel() > 0), dtype=torch.float64, device=local.device)]))
    if not parts:
        return []
    device = parts[0].device
    vec = torch.cat([p.to(device) for p in parts])
    if all_reduce is not None:
        all_reduce(vec)  # the one collective of this check
    pairs = vec.reshape(-1, 2).tolist()
    return [s / h if h > 0 else math.nan for s, h in pairs]
