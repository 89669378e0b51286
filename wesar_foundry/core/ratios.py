"""Update-ratio arithmetic (core: imports torch only).

The update ratio of a matrix is ‖W_t − W_{t−1}‖_F / ‖W_{t−1}‖_F. Everything here works on *local*
tensors, which may be whole parameters (single process, DDP) or any shard of them (FSDP: a flat
slice per rank, possibly empty). Each matrix contributes a few partial sums in fp64; summing those
over ranks (one all-reduce of one packed vector) and only then dividing gives the exact ratio.
Ratios themselves are never reduced.

Four ways a matrix contributes sums:

- ``pair`` — ``[Σ ΔW², Σ W_{t−1}²]`` of a stored tensor (raw parameters, gates, or an effective
  weight whose gain is constant, whose ratio equals the raw one).
- ``scaled`` — an effective weight ``W̄ = a·W`` with a scalar gate ``a`` that is itself a
  (possibly sharded) parameter: ``[Σ ΔW², Σ ΔW·W, Σ W², Σ a_old, Σ a_new, holders]``. The gate
  sums are the gate's value on a rank that holds it and 0 elsewhere, and ``holders`` counts those
  ranks, so after the all-reduce a = Σa / holders. With replicated shards (HSDP) every sum grows
  by the same replica factor, which cancels from every ratio. Then
  ``ΔW̄ = a'·ΔW + (a' − a)·W``, so ``‖ΔW̄‖² = a'²ΣΔW² + 2a'(a'−a)ΣΔW·W + (a'−a)²ΣW²``: no
  difference of two nearly equal big matrices is ever formed, which keeps small ratios exact.
- ``gained`` — ``W̄ = s ⊙ W`` with a per-row (or scalar) gain computed from the matrix (Weight
  Normalization, σReparam): needs whole *rows* locally, with their gains (or the one scalar gain),
  which holds unsharded and under FSDP2 (dim-0 shards); reduces to a ``pair`` locally with the
  same decomposition per row.
- ``multiplied`` — ``W̄ = α·diag(r̂)·W·diag(ĉ)`` (``reparam: multipliers``; r̂ = r/rms(r), ĉ likewise):
  whole rows locally, as ``gained``, with the row gain α·r̂ of those rows and the *whole* column
  gain ĉ. Under FSDP2 each of α, r and c is itself a dim-0 shard (c's split is not W's, and r̂
  needs the rms of all of r), so the vectors are first read whole on every rank
  (``whole_vectors``: one all-reduce of O(rows + cols) numbers per matrix, never a matrix); then
  ``ΔW̄ = a c'·ΔW + ((a − b) c' + b (c' − c))·W`` per element (a, b the new and old row gains,
  c', c the column gains), again without the difference of two nearly equal matrices.

Also here: the aggregates (pooled per role / per layer, and the uniformity figure); the roles and
layers of parameter names come from ``roles.infer_role``/``infer_layer``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

PAIR = 'pair'
SCALED = 'scaled'
WIDTH = {PAIR: 2, SCALED: 6}

# What an entry measures: a stored parameter, an effective matrix W̄, or a gate.
ENTRY_KINDS = ('raw', 'effective', 'gate')


def _f64_sum(x: torch.Tensor) -> torch.Tensor:
    # Products are formed in fp32 (exact to 6e-8 each, unbiased), accumulated in fp64.
    return torch.sum(x, dtype=torch.float64)


def local_fp32(t: torch.Tensor) -> torch.Tensor:
    """The rank-local fp32 data of a parameter (a DTensor's local shard under FSDP2)."""
    t = t.detach()
    if hasattr(t, 'to_local'):
        t = t.to_local()
    return t.float()


def pair_sums(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``[Σ (new − old)², Σ old²]`` in fp64 for local tensors of equal shape (any shard)."""
    new = local_fp32(new)
    old = local_fp32(old).to(new.device)  # an offloaded snapshot comes to the parameter, not back
    d = new - old
    return torch.stack([_f64_sum(d * d), _f64_sum(old * old)])


def scaled_sums(old: torch.Tensor, new: torch.Tensor, gate_old: torch.Tensor, gate_new: torch.Tensor) -> torch.Tensor:
    """``[Σ ΔW², Σ ΔW·W, Σ W², Σ a_old, Σ a_new, holders]`` in fp64: the local share of ``W̄ = a·W``.

    ``gate_old``/``gate_new`` are this rank's piece of the scalar gate: one element, or empty.
    """
    new = local_fp32(new)
    old = local_fp32(old).to(new.device)
    d = new - old
    a_old, a_new = local_fp32(gate_old).to(new.device), local_fp32(gate_new)
    return torch.stack([
        _f64_sum(d * d), _f64_sum(d * old), _f64_sum(old * old),
        _f64_sum(a_old).to(new.device), _f64_sum(a_new).to(new.device),
        torch.tensor(float(a_new.numel() > 0), dtype=torch.float64, device=new.device),
    ])


def gained_sums(old: torch.Tensor, new: torch.Tensor, gain_old: torch.Tensor, gain_new: torch.Tensor) -> torch.Tensor:
    """``[Σ ΔW̄², Σ W̄_old²]`` in fp64 for ``W̄ = s ⊙ W``, s of shape (1,) or (rows, 1); whole rows
    (a whole matrix, or a dim-0 shard with the gains of its rows)."""
    new = local_fp32(new)
    old = local_fp32(old).to(new.device)
    if old.dim() == 1:
        old, new = old.unsqueeze(0), new.unsqueeze(0)
    d = new - old
    rows_dd = torch.sum(d * d, dim=1, dtype=torch.float64)
    rows_dw = torch.sum(d * old, dim=1, dtype=torch.float64)
    rows_ww = torch.sum(old * old, dim=1, dtype=torch.float64)
    b = local_fp32(gain_old).to(old.device, torch.float64).reshape(-1)
    a = local_fp32(gain_new).to(old.device, torch.float64).reshape(-1)
    num = a * a * rows_dd + 2 * a * (a - b) * rows_dw + (a - b) ** 2 * rows_ww
    return torch.stack([num.sum(), (b * b * rows_ww).sum()])


def multiplied_sums(old: torch.Tensor, new: torch.Tensor, gains_old: tuple[torch.Tensor, torch.Tensor | None],
                    gains_new: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    """``[Σ ΔW̄², Σ W̄_old²]`` in fp64 for ``W̄ = s ⊙ W ⊙ c``: whole rows of W (a whole matrix or a dim-0
    shard), each gains pair ``(s, c)`` holding the row gain of those rows, shape (rows, 1) or (1, 1),
    and the whole column gain, shape (cols,), or None (``multiplier_gains`` gives both)."""
    new = local_fp32(new)
    old = local_fp32(old).to(new.device)
    (b, c), (a, c_new) = gains_old, gains_new
    if c is None:
        c = c_new = torch.ones(1, dtype=torch.float64)
    # The gains' differences are taken in fp64 (exact for fp32 values), then the products in fp32.
    f32 = lambda t: t.to(new.device, torch.float32)  # noqa: E731
    d = new - old
    # W̄' − W̄ = a c' W' − b c W = a c'·ΔW + ((a − b) c' + b (c' − c))·W.
    dbar = (f32(a) * d + f32(a - b) * old) * f32(c_new) + (f32(b) * old) * f32(c_new - c)
    wbar = f32(b) * old * f32(c)
    return torch.stack([_f64_sum(dbar * dbar), _f64_sum(wbar * wbar)])


def shard_offset(t: torch.Tensor) -> int:
    """Where this rank's piece of ``t`` starts along dim 0 of the whole tensor: 0 for a plain tensor,
    the DTensor's global offset for an FSDP2 shard (dim 0 split as ``torch.chunk`` does)."""
    if not hasattr(t, 'to_local'):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return int(offset[0]) if offset else 0


@torch.no_grad()
def whole_vectors(pieces: Sequence[tuple[torch.Tensor, int, int]],
                  all_reduce: Callable[[torch.Tensor], None] | None = None) -> list[torch.Tensor]:
    """Each vector whole, in fp64, from this rank's pieces ``(local, offset, length)``: a contiguous
    slice of a vector of ``length`` elements starting at ``offset`` (the whole vector, unsharded).

    Each rank writes its slice into zeros of the whole length and one count, 1 if it holds element
    0. With ``all_reduce`` (an in-place SUM over ranks) all of them go through it packed in one
    call; dividing by the count (1 under FSDP, the number of replicas under HSDP, whose every
    element is held once per replica) gives every rank the same whole vectors.
    """
    if not pieces:
        return []
    device = local_fp32(pieces[0][0]).device
    parts = []
    for local, offset, length in pieces:
        local = local_fp32(local).reshape(-1)
        part = torch.zeros(length + 1, dtype=torch.float64, device=device)
        part[offset:offset + local.numel()] = local.to(device, torch.float64)
        part[length] = float(local.numel() > 0 and offset == 0)
        parts.append(part)
    vec = torch.cat(parts)
    if all_reduce is not None:
        all_reduce(vec)  # the one collective of this read
    out, i = [], 0
    for _, _, length in pieces:
        out.append(vec[i:i + length] / vec[i + length])  # a vector no rank holds reads nan
        i += length + 1
    return out


def unit_rms(v: torch.Tensor) -> torch.Tensor:
    """v / √mean(v²): what ``reparam: multipliers`` makes of its row and column vectors."""
    return v / v.square().mean().sqrt()


@torch.no_grad()
def multiplier_gains(modules: Sequence[Any], all_reduce: Callable[[torch.Tensor], None] | None = None
                     ) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """``{id(module): (row gain of this rank's rows, whole column gain)}`` in fp64, for matrices
    ``W̄ = α·diag(r̂)·W·diag(ĉ)`` (``alpha``, ``row_mult`` and ``col_mult``, either vector None:
    ``reparam.multipliers``). Their α, r and c are read whole (``whole_vectors``: one collective).

    The row gain is α·r̂ for the rows of this rank's piece of ``weight``, shape (rows, 1), or α,
    shape (1, 1), without a row vector; the column gain ĉ, shape (cols,), or None. A constant gate
    scale (``gate_scale``) is left out: it cancels from every ratio.
    """
    pieces = []
    for m in modules:
        pieces += [(v, shard_offset(v), v.shape[0]) for v in (m.alpha, m.row_mult, m.col_mult) if v is not None]
    whole = iter(whole_vectors(pieces, all_reduce))
    out = {}
    for m in modules:
        row = next(whole).reshape(1, 1)
        if m.row_mult is not None:
            start, n = shard_offset(m.weight), local_fp32(m.weight).shape[0]
            row = row * unit_rms(next(whole))[start:start + n].unsqueeze(1)
        col = unit_rms(next(whole)) if m.col_mult is not None else None
        out[id(m)] = (row, col)
    return out


def scaled_to_pair(s: Sequence[float]) -> tuple[float, float]:
    """Reduced ``scaled`` sums → ``(‖ΔW̄‖², ‖W̄_old‖²)``."""
    dd, dw, ww, b, a, holders = s
    if holders <= 0:
        return math.nan, math.nan  # no rank held the gate: nothing to measure
    a, b = a / holders, b / holders
    num = a * a * dd + 2 * a * (a - b) * dw + (a - b) ** 2 * ww
    return max(num, 0.0), b * b * ww


def ratio(num: float, den: float) -> float:
    """√(num/den); nan when the old norm is 0 (a zero matrix has no meaningful ratio)."""
    return math.sqrt(num / den) if den > 0 else math.nan


@dataclass(frozen=True)
class Entry:
    """One measured quantity: a raw parameter, an effective matrix or a gate."""

    name: str
    """Cleaned qualified name (parameter name for raw/gate, module name for effective)."""
    kind: str
    """'raw', 'effective' or 'gate'."""
    role: str | None
    """Matrix role (emb, q, k, v, o, up, gate, down, head, or qkv for fused models); None if unknown."""
    layer: int | None
    """Transformer block index, None outside the blocks."""
    is_matrix: bool
    """True for 2-D weights (what aggregates and the uniformity figure are taken over)."""

    def __post_init__(self) -> None:
        # The kind is part of every metric key: a typo would log under a key no reader looks for.
        if self.kind not in ENTRY_KINDS:
            raise ValueError(f'Entry.kind={self.kind!r}; allowed: {", ".join(ENTRY_KINDS)}')


class Packer:
    """Concatenates every entry's local sums into one fp64 vector, for one all-reduce per step."""

    def __init__(self) -> None:
        self.layout: list[tuple[Entry, str]] = []
        self.parts: list[torch.Tensor] = []

    def add(self, entry: Entry, how: str, sums: torch.Tensor) -> None:
        if sums.numel() != WIDTH[how]:
            raise ValueError(f'{how} sums need {WIDTH[how]} values, got {sums.numel()}')
        self.layout.append((entry, how))
        self.parts.append(sums.reshape(-1))

    def vector(self, device: torch.device | str | None = None) -> torch.Tensor:
        if not self.parts:
            return torch.zeros(0, dtype=torch.float64, device=device)
        return torch.cat([p.to(device) if device is not None else p for p in self.parts])

    def unpack(self, reduced: torch.Tensor | Sequence[float]) -> dict[Entry, tuple[float, float]]:
        """Reduced vector → ``{entry: (‖ΔW‖², ‖W_old‖²)}`` in Python floats."""
        values = reduced.tolist() if isinstance(reduced, torch.Tensor) else list(reduced)
        out, i = {}, 0
        for entry, how in self.layout:
            chunk = values[i:i + WIDTH[how]]
            i += WIDTH[how]
            out[entry] = (chunk[0], chunk[1]) if how == PAIR else scaled_to_pair(chunk)
        return out


@dataclass
class Item:
    """How one entry is measured, with the live tensors it reads."""

    entry: Entry
    """What is measured."""
    how: str
    """'raw' (the tensor itself), 'scaled' (weight × scalar gate parameter), 'gained' (module.gain()) or
    'multiplied' (α·diag(r̂)·W·diag(ĉ) of a module with ``alpha``, ``row_mult``, ``col_mult``)."""
    weight: torch.Tensor
    """The stored weight (this rank's shard under FSDP)."""
    gate: torch.Tensor | None = None
    """The scalar gate parameter for 'scaled' (this rank's piece: one element or empty)."""
    module: Any = None
    """For 'gained': the module (a ``ReparamMatrix``) whose ``gain()`` gives W̄ = gain ⊙ weight; for
    'multiplied': the module whose vectors give W̄ (``multiplier_gains``)."""


@torch.no_grad()
def collect_sums(items: list[Item], snapshot: dict[int, torch.Tensor], gains: dict[int, torch.Tensor],
                 all_reduce: Callable[[torch.Tensor], None] | None = None) -> dict[Entry, tuple[float, float]]:
    """Every item's ``(‖ΔW‖², ‖W_old‖²)`` from this rank's tensors and the snapshot (keyed by ``id``).

    ``gains`` holds the old gains by ``id(module)``: ``gain()`` for 'gained' items, the
    ``multiplier_gains`` pair for 'multiplied' ones. With ``all_reduce`` (an in-place SUM over
    ranks) the packed sums of all items go through it in one call (after one more that reads the
    multipliers' vectors whole, when there are 'multiplied' items); without, the local sums are final.
    """
    packer = Packer()
    cache: dict[int, torch.Tensor] = {}
    multiplied = [it.module for it in items if it.how == 'multiplied']
    new_gains = multiplier_gains(multiplied, all_reduce) if multiplied else {}
    for it in items:
        old = snapshot[id(it.weight)]
        if it.how == 'raw':
            if id(it.weight) not in cache:  # an effective alias reuses its weight's sums
                cache[id(it.weight)] = pair_sums(old, it.weight)
            packer.add(it.entry, PAIR, cache[id(it.weight)])
        elif it.how == 'scaled':
            packer.add(it.entry, SCALED, scaled_sums(old, it.weight, snapshot[id(it.gate)], it.gate))
        elif it.how == 'multiplied':
            packer.add(it.entry, PAIR, multiplied_sums(old, it.weight, gains[id(it.module)], new_gains[id(it.module)]))
        else:
            packer.add(it.entry, PAIR, gained_sums(old, it.weight, gains[id(it.module)], it.module.gain()))
    vec = packer.vector()
    if all_reduce is not None:
        all_reduce(vec)  # the one collective of this step
    return packer.unpack(vec)


def uniformity(ratios: Iterable[float]) -> tuple[float, float]:
    """``(max/min, std of ln ratio)`` over the finite positive ratios; nan when fewer than one."""
    vals = [r for r in ratios if r > 0 and math.isfinite(r)]
    if not vals:
        return math.nan, math.nan
    logs = [math.log(r) for r in vals]
    mean = sum(logs) / len(logs)
    # Population std: the spread of this set of matrices, not an estimate of anything larger.
    std = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    return max(vals) / min(vals), std


def aggregate(sums: Mapping[Entry, tuple[float, float]], prefix: str = 'update_ratio') -> dict[str, float]:
    """Pooled ratios per (kind, role) and (kind, layer), and the uniformity figure per kind.

    Pooled means √(Σ‖ΔW‖² / Σ‖W‖²) over the group: the ratio of the group seen as one tensor,
    exact under sharding because it is built from the same sums. Only matrices count (and gates,
    for kind ``gate``); vectors such as norm gains are left to per-matrix logging.
    """
    groups: dict[str, list[float]] = {}
    per_kind: dict[str, list[float]] = {}
    for e, (num, den) in sums.items():
        if not (e.is_matrix or e.kind == 'gate'):
            continue
        keys = []
        if e.role is not None:
            keys.append(f'{prefix}/{e.kind}/role/{e.role}')
        if e.layer is not None and e.kind != 'gate':
            keys.append(f'{prefix}/{e.kind}/layer/{e.layer}')
        for k in keys:
            g = groups.setdefault(k, [0.0, 0.0])
            g[0] += num
            g[1] += den
        per_kind.setdefault(e.kind, []).append(ratio(num, den))
    out = {k: ratio(n, d) for k, (n, d) in sorted(groups.items())}
    for kind, rs in per_kind.items():
        mm, ls = uniformity(rs)
        finite = [r for r in rs if math.isfinite(r)]
        if kind == 'gate':
            if finite:
                out[f'{prefix}/gate/max'] = max(finite)
            continue
        out[f'{prefix}/{kind}/uniformity/max_over_min'] = mm
        out[f'{prefix}/{kind}/uniformity/log_std'] = ls
        if finite:
            out[f'{prefix}/{kind}/max'] = max(finite)
            out[f'{prefix}/{kind}/min'] = min(finite)
    return out


def matrix_key(entry: Entry, prefix: str = 'update_ratio') -> str:
    """The per-matrix metric key of an entry."""
    return f'{prefix}/{entry.kind}/matrix/{entry.name}'


# ---------------------------------------------------------------------------------------------
# Names: the wrapper parts FSDP, activation checkpointing, torch.compile and DDP add.

_WRAPPERS = re.compile(r'(^|\.)(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod|module)(?=\.)')


def clean_name(name: str) -> str:
    """A parameter name without FSDP / activation-checkpointing / compile / DDP wrapper parts."""
    prev = None
    while prev != name:
        prev, name = name, _WRAPPERS.sub(r'\1', name).lstrip('.')
    return name.replace('..', '.')
