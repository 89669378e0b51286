"""Coordinate-check arithmetic: how a per-role quantity scales with width (core: stdlib only).

``wesar-foundry coord-check`` trains a few steps at several widths and records, per matrix role,
quantities such as the update ratio and the RMS of the matrices' outputs. Under a
parameterization whose hyperparameters transfer across width those stay flat; otherwise they
grow or shrink as a power of the width. The fit here is that power: the least-squares slope of
ln(value) against ln(width), and a role *drifts* when the slope's magnitude exceeds a tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Written into the command's help and its JSON, so that a reader of either knows what a flag means.
RULE = ('a role drifts with width when |slope| > tol, where slope is the least-squares slope of ln(value) '
        'against ln(width) over the widths run (value ∝ width^slope; 0: flat). A role with a value that is not '
        'finite and positive at some width cannot be fitted and is reported as "no fit" (flagged too)')

STATUSES = ('flat', 'drifts', 'no fit')


def log_slope(xs: Iterable[float], ys: Iterable[float]) -> float:
    """The least-squares slope of ln(y) against ln(x); nan when some y is not finite and positive.

    Raises a ValueError for fewer than two distinct positive x (no slope exists), or x and y of
    different lengths.
    """
    xs, ys = list(xs), list(ys)
    if len(xs) != len(ys):
        raise ValueError(f'log_slope: {len(xs)} x values for {len(ys)} y values')
    if any(not (math.isfinite(x) and x > 0) for x in xs) or len(set(xs)) < 2:
        raise ValueError(f'log_slope: needs at least two distinct positive x values, got {xs}')
    if any(not (math.isfinite(y) and y > 0) for y in ys):
        return math.nan
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


@dataclass(frozen=True)
class Drift:
    """How one role's value scales with width."""

    role: str
    """The matrix role (q, k, v, o, up, gate, down, qkv, gate_up, emb, head)."""
    slope: float
    """d ln(value) / d ln(width), fitted over the widths; nan when it could not be fitted."""
    status: str
    """'flat' (|slope| <= tol), 'drifts' (|slope| > tol) or 'no fit'."""

    @property
    def flagged(self) -> bool:
        """Whether the role is named as drifting (or could not be shown flat)."""
        return self.status != 'flat'


def classify(slope: float, tol: float) -> str:
    """The status of a fitted ``slope`` under ``tol`` (see ``RULE``)."""
    if not tol > 0:
        raise ValueError(f'tol={tol!r} must be > 0')
    if not math.isfinite(slope):
        return 'no fit'
    return 'drifts' if abs(slope) > tol else 'flat'


def drifts(values: Mapping[str, Mapping[float, float]], tol: float) -> dict[str, Drift]:
    """``{role: {width: value}}`` → ``{role: Drift}``, each slope fitted over that role's widths."""
    out = {}
    for role, by_width in values.items():
        widths = sorted(by_width)
        slope = log_slope(widths, [by_width[w] for w in widths])
        out[role] = Drift(role, slope, classify(slope, tol))
    return out


def rms(sum_sq: float, count: int) -> float:
    """√(Σx² / n); nan for no elements."""
    return math.sqrt(sum_sq / count) if count > 0 else math.nan


def role_means(values: Mapping[str, float], roles: Mapping[str, str]) -> dict[str, float]:
    """The mean of per-matrix ``values`` (``{matrix name: value}``) over the matrices of each role
    (``roles``: ``{matrix name: role}``), in order of first appearance."""
    groups: dict[str, list[float]] = {}
    for name, value in values.items():
        groups.setdefault(roles[name], []).append(value)
    return {role: sum(vs) / len(vs) for role, vs in groups.items()}
