"""Tune small, train big (issue 24): does each method's best lr hold across width and depth?

A grid of ``wesar-foundry demo`` runs (``demo.run_config`` through ``spike_search.one_run``:
seq 128, batch 16, 200 steps, warm-up 10, cosine to 10%, AdamW (0.9, 0.95), decoupled weight
decay 0.01·lr, clip 1.0, z-loss 1e-4, the docstring corpus capped at 4M characters, held-out
loss on the whole val split). 200 steps × 16 × 128 = 0.41M tokens, under the corpus's 1.1M train
tokens: every run sees each token at most once (the sub-epoch regime the issue asks for).

Shapes: widths 64, 128, 256 at depth 4, and depths 2, 4, 8 at width 128 (d128 N4 is shared);
4 heads at d ≥ 128, 2 at d = 64 (head dim 32 or 64). lrs 3e-4 … 3e-2 (five, evenly spaced in log
lr over two orders of magnitude). Methods: ``small``, ``he``, ``wesar`` (σ² 4e-5), ``wesar_auto``,
``multipliers`` (``reparam: multipliers``, row_column, at WeSaR's σ²; issue 25).

**Resumable, appended as it goes.** Each finished run is appended as one JSON line to
``<out>/runs.jsonl`` (and its run folder keeps ``result.json``); a second call skips every run
already there, so the grid can be run over several sittings (``--budget-min`` stops starting
runs past a wall time). The order puts a useful figure first: seed 17 over the whole width
series, then the depth series, then seed 18, then a third seed at each method's best point.

**What it reports** (``<out>/table.md``, ``summary.json``, ``transfer-width.png``,
``transfer-depth.png``), per method and shape, from the held-out losses ℓ(η) averaged over seeds:
- the optimal lr η* (the grid point with the lowest mean; ties impossible in practice);
- Wortsman et al. (2023)'s **LR sensitivity**: mean over the grid of min(ℓ(η), ℓ₀) − ℓ*, where ℓ*
  is the best mean over the grid and ℓ₀ the loss at initialization (the train cross-entropy of the
  first step, taken before any update; averaged over the method's runs of that shape). A diverged
  run (no held-out loss) counts as ℓ₀. Only grid points with a result for that method and shape
  count, and the table says how many.

**The relative-step sweep** (``--sweep rel-step``, ``<out>/rel_step/``): WeSaR with ``sigma2: auto``
at lr 1e-2, its reference σ² (``ref_sigma2``, so the relative step lr_ref/σ_ref) on a ×2 grid
4e-5·{¼ … 8} at widths 64, 128, 256 (4 layers). Without a width rule the best ref σ² should not
move with width; μP's scaling of Adam's hidden-matrix step says it grows ∝ width, which is what
``ref_width`` does. A run with ``ref_sigma2: S, ref_width: 128`` at width d is the run with
``ref_sigma2: S·d/128`` and no ``ref_width`` (the same σ², the same gates: ``sigma_rule``), so
one grid gives both figures: loss against the relative step (no rule) and against the rule's S.

Where a method's best lr is at an end of the grid (in any seed), one lr past it (1e-4 or 1e-1) is
run for every grid seed, so the optimum lies inside the points run: the lr sweep does it once the
grid is complete, before the third seed (``--sweep edges`` runs only these); the LR sensitivity
stays over the five grid lrs.

**The weight-decay sweep** (``--sweep wd``, issue 25, ``<out>/weight_decay.md``): ``small``, ``wesar`` and
``multipliers`` at d128 N4 over the lr grid (one seed, then the other two at each best lr) at the
demo's weight decay (0.01 in torch AdamW's terms), at 0.1 (the AdamW-equivalent value of the
learnable-multipliers argument), and at Composer's decoupled 0.01 at every lr, which decays every
run by 1.1 e-folds (``SCHEDULE_SUM``): in 200 steps torch's 0.1 decays a run at lr 1e-3 by 0.011
e-folds only, far from the noise/decay equilibrium the argument is about. It reports the learned
multipliers' spread per role at each best lr.

    OMP_NUM_THREADS=2 python bench/transfer.py --budget-min 120
    OMP_NUM_THREADS=2 python bench/transfer.py --sweep wd --budget-min 60
    OMP_NUM_THREADS=2 python bench/transfer.py --sweep edges --budget-min 30
    OMP_NUM_THREADS=2 python bench/transfer.py --sweep rel-step --budget-min 30
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ['small', 'he', 'wesar', 'wesar_auto', 'multipliers']
LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
# One point past each end of the grid, run where a method's best is at that end (``--sweep edges``):
# the optimum then lies inside the points run. LR sensitivity stays over LRS alone.
EDGE_LRS = (1e-4, 1e-1)
WIDTHS, DEPTH_AT = [64, 128, 256], 4
DEPTHS, WIDTH_AT = [2, 4, 8], 128
TAIL = 'T128_B16_w10_s200'
# Weight decay, as a setting suffix: 'wd<x>' is x in torch AdamW's terms (Composer's decoupled value x·lr),
# 'dwd<x>' Composer's decoupled value x at every lr. The demo's wd0.01 is every run above; the weight-decay
# sweep (issue 25: the noise/decay equilibrium learnable multipliers answer) adds wd0.1 and dwd0.01, for:
DECAY, DECAYS, DECAY_METHODS = 'wd0.01', ['wd0.01', 'wd0.1', 'dwd0.01'], ['small', 'wesar', 'multipliers']
# Σ lr_t/lr_peak over the schedule (10 warm-up steps, 190 of cosine to 10%): the decay a run gets is
# exp(−x·lr·SCHEDULE_SUM) under wd<x>, exp(−x·SCHEDULE_SUM) under dwd<x> (1.1 e-folds at dwd0.01).
SCHEDULE_SUM = 5.0 + 190 * 0.55
# The relative-step sweep: sigma2: auto at one lr, its reference σ² on a ×2 grid, and the rule's width.
REL_LR, REL_FACTORS, REF_SIGMA2, REF_LR, RULE_WIDTH = 1e-2, [0.25, 0.5, 1, 2, 4, 8], 4e-5, 1e-3, 128


def shape(d: int, n: int) -> str:
    return f'd{d}_N{n}' + ('_h2' if d < 128 else '')


def setting(d: int, n: int, lr: float, decay: str = DECAY) -> str:
    """A ``spike_search`` setting spec (its parser reads d, N, h, T, B, w, s, lr, wd and dwd)."""
    return f'{shape(d, n)}_{TAIL}_lr{lr:g}' + (f'_{decay}' if decay != DECAY else '')


def plan(seeds: list[int]) -> list[tuple[int, int, str, float, int]]:
    """(d, N, method, lr, seed) in the order the grid is run: one seed over the width series, the
    depth series, then the next seed (the third seed goes to each best point, see ``best_points``)."""
    shapes = [(d, DEPTH_AT) for d in WIDTHS] + [(WIDTH_AT, n) for n in DEPTHS if n != DEPTH_AT]
    return [(d, n, m, lr, sd) for sd in seeds for d, n in shapes for m in METHODS for lr in LRS]


def edge_plan(rows: list[dict[str, Any]], seeds: list[int]) -> list[tuple[int, int, str, float, int]]:
    """For each shape and method whose best lr, in any seed with the whole grid run, is at an end of
    the points run: the edge lr past that end (once: nothing past EDGE_LRS), for every grid seed, so
    an edge point is averaged over as many seeds as the grid."""
    by: dict[tuple, dict[float, float]] = {}
    for r in rows:
        v = r['val_loss'] if math.isfinite(r.get('val_loss', math.nan)) else math.inf
        by.setdefault((r['d'], r['N'], r['method'], r['seed']), {})[r['lr']] = v
    edges: set[tuple[int, int, str, float]] = set()
    for (d, n, m, _), losses in by.items():
        if not set(LRS) <= set(losses):
            continue
        best = min(LRS, key=losses.get)  # on the grid: an edge already run does not hide the need for it
        if best == min(LRS):
            edges.add((d, n, m, EDGE_LRS[0]))
        elif best == max(LRS):
            edges.add((d, n, m, EDGE_LRS[1]))
    return [(d, n, m, lr, sd) for sd in seeds for d, n, m, lr in sorted(edges)]


def wd_plan(seed: int, methods: list[str]) -> list[tuple[int, int, str, float, int, str]]:
    """The weight-decay sweep's grid: DECAY_METHODS at d128 N4 over the lr grid at each of DECAYS (at
    DECAY the lr grid's own runs serve), one seed; the other seeds go to each best lr."""
    return [(WIDTH_AT, DEPTH_AT, m, lr, seed, dc) for dc in DECAYS for m in DECAY_METHODS if m in methods for lr in LRS]


def wd_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the weight-decay sweep compares: DECAY_METHODS at d128 N4."""
    return [r for r in rows if r['shape'] == shape(WIDTH_AT, DEPTH_AT) and r['method'] in DECAY_METHODS]


def key(d: int, n: int, m: str, lr: float, sd: int, decay: str = DECAY) -> str:
    return f'{shape(d, n)}|{m}|{lr:g}|{sd}' + (f'|{decay}' if decay != DECAY else '')


def first_loss(metrics: Path) -> float:
    """The train cross-entropy of the first step: the loss at initialization."""
    from wesar_foundry.commands.plot import read_metrics
    s = read_metrics(metrics).series.get('loss/train/ce', [])
    return s[0][1] if s else math.nan


def analyse(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per shape and method: mean held-out loss per lr, η*, ℓ*, ℓ₀, LR sensitivity."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r['shape'], {}).setdefault(r['method'], []).append(r)
    summ: dict[str, dict[str, Any]] = {}
    for sh, by_method in out.items():
        for m, rs in by_method.items():
            l0s = [r['l0'] for r in rs if math.isfinite(r.get('l0', math.nan))]
            l0 = statistics.mean(l0s) if l0s else math.nan
            per_lr: dict[float, list[float]] = {}
            for r in rs:
                v = r.get('val_loss', math.nan)
                per_lr.setdefault(r['lr'], []).append(v if math.isfinite(v) else l0)
            means = {lr: statistics.mean(v) for lr, v in sorted(per_lr.items())}
            stds = {lr: (statistics.stdev(v) if len(v) > 1 else math.nan) for lr, v in sorted(per_lr.items())}
            grid = {lr: v for lr, v in means.items() if lr in LRS}
            best = min(grid.values())  # ℓ*: the best on the grid (Wortsman's definition)
            best_lr = min(means, key=means.get)  # the optimum over every point run, edges included
            fit = fitted_min(list(means), list(means.values())) if len(grid) == len(LRS) else None
            sens = statistics.mean(min(v, l0) - best for v in grid.values()) if math.isfinite(l0) else math.nan
            summ.setdefault(sh, {})[m] = {'loss': means, 'std': stds, 'n': {lr: len(v) for lr, v in per_lr.items()},
                                         'best_lr': best_lr, 'fitted_lr': fit, 'best': best, 'l0': l0, 'lr_sensitivity': sens,
                                         'grid_points': len(grid)}
    return summ


def table(summ: dict[str, dict[str, Any]], by_seed: dict[int, dict[str, dict[str, Any]]] | None = None) -> str:
    """The markdown table of ``summ``; with ``by_seed`` (each grid seed's own analysis) the slopes
    are also given per seed, which says how far one seed's optimum can be trusted."""
    cols = sorted(set(LRS) | {lr for by_m in summ.values() for s in by_m.values() for lr in s['loss']})
    lines = ['| shape | method | ' + ' | '.join(f'lr {lr:g}' for lr in cols) + ' | best lr (fitted) | ℓ* | ℓ₀ | LR sensitivity (points) |',
             '|---|---|' + '---|' * len(cols) + '---|---|---|---|']
    for sh in sorted(summ, key=lambda s: (int(s.split('_')[1][1:]), int(s.split('_')[0][1:]))):
        for m in METHODS:
            if m not in summ[sh]:
                continue
            s = summ[sh][m]
            cells = []
            for lr in cols:
                if lr in s['loss']:
                    sd = s['std'][lr]
                    cells.append(f'{s["loss"][lr]:.3f}' + (f' ± {sd:.3f}' if math.isfinite(sd) else '') + f' ({s["n"][lr]})')
                else:
                    cells.append('–')
            fit = f' ({s["fitted_lr"]:.2g})' if s.get('fitted_lr') else ''
            lines.append(f'| {sh} | {m} | ' + ' | '.join(cells) + f' | {s["best_lr"]:g}{fit} | {s["best"]:.3f} | {s["l0"]:.3f} | '
                         f'{s["lr_sensitivity"]:.3f} ({s["grid_points"]}/{len(LRS)}) |')
    seeds = sorted(by_seed or {})
    lines += ['', 'Slope of ln(best lr) against ln(width) at depth 4 and ln(depth) at width 128 (fitted optimum where '
              'the grid has one inside it, else the grid\'s best; shapes with the whole lr grid; 0: the lr transfers)'
              + (f'; then each seed\'s own ({", ".join(map(str, seeds))})' if seeds else '') + ':', '',
              '| method | against width | against depth |', '|---|---|---|']

    def slope(sm: dict[str, dict[str, Any]], m: str, series: list[tuple[int, str]]) -> str:
        full = [(x, sm[sh][m]) for x, sh in series if sm.get(sh, {}).get(m, {}).get('grid_points') == len(LRS)]
        pts = [(x, s['fitted_lr'] or s['best_lr']) for x, s in full]
        v = width_slope(pts) if len(pts) >= 3 else None
        return f'{v:+.2f}' if v is not None else f'n/a ({len(pts)} shapes)'

    for m in METHODS:
        cells = []
        for series in ([(d, shape(d, DEPTH_AT)) for d in WIDTHS], [(n, shape(WIDTH_AT, n)) for n in DEPTHS]):
            each = [slope(by_seed[sd], m, series) for sd in seeds]
            cells.append(slope(summ, m, series) + (f' (per seed: {" / ".join(each)})' if each else ''))
        lines.append(f'| {m} | {cells[0]} | {cells[1]} |')
    return '\n'.join(lines)


def plot(summ: dict[str, dict[str, Any]], series: list[str], label: str, path: Path) -> None:
    """The transfer figure: held-out loss against lr, one panel per method, one curve per shape."""
    lr_curves({m: {sh: summ[sh][m] for sh in series if m in summ.get(sh, {})} for m in METHODS}, label, 4.0, path)


def lr_curves(panels: dict[str, dict[str, dict[str, Any]]], legend: str | None, panel_width: float, path: Path) -> None:
    """Held-out loss against lr, one panel per key of ``panels``, one curve per ``analyse`` summary in
    it (its label the key), a star at its best lr; ``path`` with .png and .svg."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), 3.6), sharey=True)
    for ax, (title, curves) in zip(axes, panels.items()):
        for label, s in curves.items():
            lrs = sorted(s['loss'])
            ax.plot(lrs, [s['loss'][lr] for lr in lrs], marker='o', label=label)
            ax.plot([s['best_lr']], [s['loss'][s['best_lr']]], marker='*', markersize=12, color=ax.lines[-1].get_color())
        ax.set_xscale('log')
        ax.set_title(title)
        ax.set_xlabel('peak learning rate')
    axes[0].set_ylabel('held-out loss (nats/token)')
    axes[-1].legend(title=legend, fontsize=8)
    fig.tight_layout()
    for suffix in ('.png', '.svg'):
        fig.savefig(path.with_suffix(suffix), dpi=110)
    plt.close(fig)


def wd_report(rows: list[dict[str, Any]], out: Path) -> None:
    """``<out>/weight_decay.md`` and ``weight-decay.png``/``.svg``: held-out loss against lr for DECAY_METHODS at
    each weight decay, each method at its own best lr over every seed run there, and the learned
    multipliers' spread per role at that lr (mean over seeds)."""
    sh = shape(WIDTH_AT, DEPTH_AT)
    summ = {dc: analyse([r for r in wd_rows(rows) if r.get('decay', DECAY) == dc]).get(sh, {}) for dc in DECAYS}
    cols = sorted({lr for by_m in summ.values() for s in by_m.values() for lr in s['loss']})
    lines = [f'Weight decay at {sh}: wd<x> is x in torch AdamW\'s terms (Composer\'s decoupled value x·lr), dwd<x> '
             'Composer\'s decoupled value x at every lr; gates, gains and multiplier vectors out of it. '
             f'e-folds of decay over a run: wd<x> x·lr·{SCHEDULE_SUM:g}, dwd<x> x·{SCHEDULE_SUM:g}. '
             'Held-out loss per lr: mean (seeds); each method at its own best lr:', '',
             '| decay | method | ' + ' | '.join(f'lr {lr:g}' for lr in cols)
             + ' | best lr | e-folds of decay at it | held-out at best: mean ± std (seeds) | LR sensitivity |',
             '|---|---|' + '---|' * len(cols) + '---|---|---|---|']
    for dc, by_m in summ.items():
        for m in DECAY_METHODS:
            if m not in by_m:
                continue
            s = by_m[m]
            cells = [f'{s["loss"][lr]:.3f} ({s["n"][lr]})' if lr in s['loss'] else '–' for lr in cols]
            b = s['best_lr']
            sd = s['std'][b]
            x = float(dc.lstrip('dw'))
            efolds = x * SCHEDULE_SUM * (b if dc.startswith('wd') else 1.0)
            lines.append(f'| {dc} | {m} | ' + ' | '.join(cells) + f' | {b:g} | {efolds:.2g} | **{s["loss"][b]:.3f}**'
                         + (f' ± {sd:.3f}' if math.isfinite(sd) else '') + f' ({s["n"][b]}) | '
                         f'{s["lr_sensitivity"]:.3f} ({s["grid_points"]}/{len(LRS)}) |')
    lines += ['', 'The learned multipliers at the best lr (mean over its seeds): the spread (std) of r̂ = r/rms(r) and '
              'ĉ per role (mean over the role\'s matrices; 0 at init), their smallest entry (over the matrices; 1 at '
              'init), and the raw vectors\' rms (largest over the matrices; 1 at init: the drift along r·k, c/k):', '',
              '| decay | best lr | role | std r̂ | std ĉ | min r̂ | min ĉ | rms r | rms c |', '|---|---|---|---|---|---|---|---|---|']
    for dc, by_m in summ.items():
        if 'multipliers' not in by_m:
            continue
        b = by_m['multipliers']['best_lr']
        spreads = [r['multipliers'] for r in wd_rows(rows) if r['method'] == 'multipliers' and r.get('decay', DECAY) == dc
                   and r['lr'] == b and r.get('multipliers')]
        for role in (spreads[0] if spreads else {}):
            v = lambda k, f=statistics.mean: f([sp[role][k] for sp in spreads if k in sp.get(role, {})] or [math.nan])  # noqa: E731
            lines.append(f'| {dc} | {b:g} ({len(spreads)}) | {role} | {v("row_std"):.3f} | {v("col_std"):.3f} | '
                         f'{v("row_min", min):.3f} | {v("col_min", min):.3f} | {v("row_rms", max):.4f} | {v("col_rms", max):.4f} |')
    md = '\n'.join(lines)
    (out / 'weight_decay.md').write_text(md + '\n')
    print(md)
    lr_curves({f'{sh}, {dc}': {m: by_m[m] for m in DECAY_METHODS if m in by_m} for dc, by_m in summ.items()},
              None, 4.5, out / 'weight-decay')


def rel_plan(seeds: list[int]) -> list[tuple[int, int, float, int]]:
    """(d, N, ref σ², seed) of the relative-step sweep: one seed over the width series, then the next."""
    return [(d, DEPTH_AT, REF_SIGMA2 * f, sd) for sd in seeds for d in WIDTHS for f in REL_FACTORS]


def rel_key(d: int, n: int, s2: float, sd: int) -> str:
    return f'{shape(d, n)}|wesar_auto|lr{REL_LR:g}|sig{s2:g}|{sd}'


def fitted_min(xs: list[float], ys: list[float]) -> float | None:
    """The minimum of a parabola in log x through the lowest grid point and its two neighbours (a finer
    estimate of the optimum than the grid's spacing); None when the lowest point is at an end of the grid."""
    i = min(range(len(ys)), key=ys.__getitem__)
    if i in (0, len(ys) - 1):
        return None
    (x0, x1, x2), (y0, y1, y2) = [math.log(x) for x in xs[i - 1:i + 2]], ys[i - 1:i + 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 ** 2 * (y0 - y1) + x1 ** 2 * (y2 - y0) + x0 ** 2 * (y1 - y2)) / denom
    return math.exp(-b / (2 * a)) if a > 0 else None


def rel_analyse(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per shape: mean held-out loss per ref σ², the best on the grid and the fitted optimum, as ref σ²,
    as relative step lr_ref/σ_ref, and as the rule's S = σ²·RULE_WIDTH/d (``ref_width: RULE_WIDTH``)."""
    by: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        by.setdefault(r['shape'], {}).setdefault(r['ref_sigma2'], []).append(
            r['val_loss'] if math.isfinite(r.get('val_loss', math.nan)) else r.get('l0', math.nan))
    out = {}
    for sh, per in by.items():
        d = int(sh.split('_')[0][1:])
        s2s = sorted(per)
        means = [statistics.mean(per[x]) for x in s2s]
        best = s2s[min(range(len(means)), key=means.__getitem__)]
        fit = fitted_min(s2s, means)
        out[sh] = {'d': d, 'ref_sigma2': s2s, 'loss': means, 'n': [len(per[x]) for x in s2s],
                   'std': [statistics.stdev(per[x]) if len(per[x]) > 1 else math.nan for x in s2s],
                   'best_ref_sigma2': best, 'fitted_ref_sigma2': fit,
                   'best_rel_step': REF_LR / math.sqrt(best), 'fitted_rel_step': REF_LR / math.sqrt(fit) if fit else None,
                   'best_rule_S': best * RULE_WIDTH / d, 'fitted_rule_S': fit * RULE_WIDTH / d if fit else None}
    return out


def width_slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of ln(value) against ln(width): 0 means the value transfers across width."""
    pts = [(math.log(d), math.log(v)) for d, v in points if v]
    if len(pts) < 2:
        return None
    mx, my = statistics.mean(p[0] for p in pts), statistics.mean(p[1] for p in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def rel_table(summ: dict[str, dict[str, Any]]) -> str:
    shapes = sorted(summ, key=lambda s: summ[s]['d'])
    cols = sorted({x for s in shapes for x in summ[s]['ref_sigma2']})
    lines = ['| width | ' + ' | '.join(f'ref σ² {x:g} (step {REF_LR / math.sqrt(x):.3f})' for x in cols)
             + ' | best ref σ² (grid / fitted) | best relative step (fitted) | rule\'s S = σ²·128/d (fitted) |',
             '|---|' + '---|' * len(cols) + '---|---|---|']
    for sh in shapes:
        s = summ[sh]
        cells = []
        for x in cols:
            if x in s['ref_sigma2']:
                i = s['ref_sigma2'].index(x)
                sd = s['std'][i]
                cells.append(f'{s["loss"][i]:.3f}' + (f' ± {sd:.3f}' if math.isfinite(sd) else '') + f' ({s["n"][i]})')
            else:
                cells.append('–')
        fit = lambda v, f='.3g': format(v, f) if v else 'at the grid\'s end'  # noqa: E731
        lines.append(f'| {s["d"]} | ' + ' | '.join(cells) + f' | {s["best_ref_sigma2"]:g} / {fit(s["fitted_ref_sigma2"])} | '
                     f'{fit(s["fitted_rel_step"], ".3f")} | {fit(s["fitted_rule_S"])} |')
    fitted = [(summ[sh]['d'], summ[sh]['fitted_ref_sigma2']) for sh in shapes]
    slope = width_slope(fitted)
    lines.append('')
    lines.append(f'Slope of ln(fitted best ref σ²) against ln(width): '
                 + (f'{slope:+.2f}' if slope is not None else 'n/a')
                 + ' (0: the relative step transfers as it is; +1: σ² ∝ width, the ``ref_width`` rule).')
    return '\n'.join(lines)


def rel_plot(summ: dict[str, dict[str, Any]], path: Path) -> None:
    """Held-out loss against the relative step (no rule) and against the rule's S, one curve per width."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for sh in sorted(summ, key=lambda s: summ[s]['d']):
        s = summ[sh]
        x_step = [REF_LR / math.sqrt(x) for x in s['ref_sigma2']]
        x_rule = [x * RULE_WIDTH / s['d'] for x in s['ref_sigma2']]
        line, = axes[0].plot(x_step, s['loss'], marker='o', label=f'd={s["d"]}')
        axes[1].plot(x_rule, s['loss'], marker='o', color=line.get_color(), label=f'd={s["d"]}')
        i = s['ref_sigma2'].index(s['best_ref_sigma2'])
        axes[0].plot([x_step[i]], [s['loss'][i]], marker='*', markersize=13, color=line.get_color())
        axes[1].plot([x_rule[i]], [s['loss'][i]], marker='*', markersize=13, color=line.get_color())
    axes[0].set_xlabel('relative step lr_ref/σ_ref (the same at every width)')
    axes[1].set_xlabel(f'ref_sigma2 with ref_width: {RULE_WIDTH} (σ² ∝ width)')
    axes[0].set_ylabel('held-out loss (nats/token)')
    for ax in axes:
        ax.set_xscale('log')
    axes[0].set_title(f'sigma2: auto, lr {REL_LR:g}: no width rule')
    axes[1].set_title('the same runs under the ref_width rule')
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    for suffix in ('.png', '.svg'):
        fig.savefig(path.with_suffix(suffix), dpi=110)
    plt.close(fig)


def runs_log(out: Path) -> tuple[Path, list[dict[str, Any]]]:
    """``<out>/runs.jsonl`` (one line per finished run, appended as it finishes) and the rows already in it."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / 'runs.jsonl'
    return log, [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seeds', default='17,18', help='seeds over the whole grid (a third goes to best points)')
    ap.add_argument('--third-seed', type=int, default=19, help='seed added at each method × shape best lr')
    ap.add_argument('--budget-min', type=float, default=120.0, help='start no run past this wall time (minutes)')
    ap.add_argument('--work', default='/tmp/wesar-transfer', help='run folders (metrics, result.json)')
    ap.add_argument('--out', default='bench/results/transfer')
    ap.add_argument('--report-only', action='store_true', help='analyse runs.jsonl, train nothing')
    ap.add_argument('--methods', default=','.join(METHODS), help='the methods to run (every method run is reported)')
    ap.add_argument('--sweep', choices=['lr', 'edges', 'rel-step', 'wd'], default='lr',
                    help="lr: the methods' lr grid; edges: one lr past an end of it where the best is at that end; "
                         "rel-step: sigma2: auto's reference σ² across width; wd: small, wesar and multipliers "
                         f"at d{WIDTH_AT} N{DEPTH_AT} at weight decays {', '.join(DECAYS)}")
    args = ap.parse_args()
    methods = args.methods.split(',')
    if bad := [m for m in methods if m not in METHODS]:
        raise SystemExit(f'--methods {",".join(bad)}: allowed: {", ".join(METHODS)}')
    if args.sweep == 'rel-step':
        return rel_step(args)

    import os
    os.environ.setdefault('OMP_NUM_THREADS', '2')
    from spike_search import one_run

    out, work = Path(args.out), Path(args.work)
    log, rows = runs_log(out)
    done = {r['key'] for r in rows}
    seeds = [int(s) for s in args.seeds.split(',')]
    at_decay = lambda dc: [r for r in rows if r.get('decay', DECAY) == dc]  # noqa: E731 -- the lr grid is at DECAY
    mine = lambda pts: [p for p in pts if p[2] in methods]  # noqa: E731
    planned = mine(edge_plan(at_decay(DECAY), seeds) if args.sweep == 'edges' else
                   wd_plan(seeds[0], methods) if args.sweep == 'wd' else plan(seeds))
    todo = [] if args.report_only else [p for p in planned if key(*p) not in done]
    start, walls = time.perf_counter(), []

    def run(d: int, n: int, m: str, lr: float, sd: int, decay: str = DECAY) -> None:
        elapsed = time.perf_counter() - start
        print(f'[transfer] {shape(d, n)} {m} lr {lr:g} seed {sd} {decay} ({len(rows)} done, {elapsed / 60:.1f} min in)', flush=True)
        r = one_run(setting(d, n, lr, decay), m, sd, work, work / 'data')
        metrics = work / setting(d, n, lr, decay) / f'{m}-seed{sd}' / 'metrics.jsonl'
        row = {'key': key(d, n, m, lr, sd, decay), 'shape': shape(d, n), 'd': d, 'N': n, 'method': m, 'lr': lr, 'seed': sd,
               'decay': decay, 'val_loss': r.get('val_loss', math.nan), 'train_loss': r.get('train_loss', math.nan),
               'l0': first_loss(metrics) if metrics.exists() else math.nan, 'wall_s': r['wall_s'],
               'error': r.get('error'), 'gate_min_fraction': r.get('gate_min_fraction', math.nan),
               **({'multipliers': r['multipliers']} if 'multipliers' in r else {})}
        with open(log, 'a') as f:  # appended the moment it finishes: a stopped grid loses no run
            f.write(json.dumps(row) + '\n')
        rows.append(row)
        walls.append(r['wall_s'])
        print(f'[transfer]   {r["wall_s"]:.0f} s: held-out {row["val_loss"]:.3f}, l0 {row["l0"]:.3f}'
              + (f', {row["error"][:100]}' if row['error'] else ''), flush=True)

    def over_budget() -> bool:
        est = statistics.mean(walls) if walls else 0.0
        return time.perf_counter() - start + est > args.budget_min * 60

    for p in todo:
        if over_budget():
            print(f'[transfer] budget {args.budget_min:g} min reached: {len(todo) - len(walls)} runs left for the next call')
            break
        run(*p)
    def run_missing(points: list[tuple]) -> None:
        for p in points:
            if key(*p) not in {r['key'] for r in rows} and not over_budget():
                run(*p)

    def at_best(decay: str, rs: list[dict[str, Any]], extra: list[int]) -> list[tuple]:
        """The ``extra`` seeds at each of ``methods``' best lr in each shape of ``rs``."""
        return [(int(sh.split('_')[0][1:]), int(sh.split('_')[1][1:]), m, s['best_lr'], sd, decay)
                for sh, by_m in analyse(rs).items() for m, s in by_m.items() if m in methods for sd in extra]

    if args.sweep == 'lr' and not args.report_only:
        run_missing(mine(edge_plan(at_decay(DECAY), seeds)))  # the edge lrs the whole grid calls for, then the third seed at each best lr
        run_missing(at_best(DECAY, at_decay(DECAY), [args.third_seed]))
    if args.sweep == 'wd':
        if not args.report_only:
            for dc in DECAYS:
                run_missing([(*p, dc) for p in mine(edge_plan(wd_rows(at_decay(dc)), seeds[:1]))])
            for _ in range(2):  # the other seeds at each best lr; again once if a new seed moved the best
                for dc in DECAYS:
                    run_missing(at_best(dc, wd_rows(at_decay(dc)), [*seeds[1:], args.third_seed]))
        return wd_report(rows, out)

    summ = analyse(at_decay(DECAY))
    md = table(summ, {sd: analyse([r for r in at_decay(DECAY) if r['seed'] == sd]) for sd in seeds})
    (out / 'table.md').write_text(md + '\n')
    (out / 'summary.json').write_text(json.dumps(summ, indent=1, default=str))
    plot(summ, [shape(d, DEPTH_AT) for d in WIDTHS], f'width (N={DEPTH_AT})', out / 'transfer-width')
    plot(summ, [shape(WIDTH_AT, n) for n in DEPTHS], f'depth (d={WIDTH_AT})', out / 'transfer-depth')
    print(md)


def rel_step(args: argparse.Namespace) -> None:
    """The relative-step sweep (module doc): resumable like the lr grid, in ``<out>/rel_step/``."""
    import os
    os.environ.setdefault('OMP_NUM_THREADS', '2')
    out, work = Path(args.out) / 'rel_step', Path(args.work)
    log, rows = runs_log(out)
    done = {r['key'] for r in rows}
    todo = [] if args.report_only else [p for p in rel_plan([int(s) for s in args.seeds.split(',')]) if rel_key(*p) not in done]
    start, walls = time.perf_counter(), []
    for d, n, s2, sd in todo:
        est = statistics.mean(walls) if walls else 0.0
        if time.perf_counter() - start + est > args.budget_min * 60:
            print(f'[rel-step] budget {args.budget_min:g} min reached: {len(todo) - len(walls)} runs left for the next call')
            break
        from spike_search import one_run
        spec = f'{shape(d, n)}_{TAIL}_lr{REL_LR:g}_sig{s2:g}'
        print(f'[rel-step] {shape(d, n)} ref_sigma2 {s2:g} seed {sd} ({len(rows)} done)', flush=True)
        r = one_run(spec, 'wesar_auto', sd, work, work / 'data')
        metrics = work / spec / f'wesar_auto-seed{sd}' / 'metrics.jsonl'
        row = {'key': rel_key(d, n, s2, sd), 'shape': shape(d, n), 'd': d, 'N': n, 'method': 'wesar_auto', 'lr': REL_LR,
               'ref_sigma2': s2, 'rel_step': REF_LR / math.sqrt(s2), 'seed': sd,
               'val_loss': r.get('val_loss', math.nan), 'train_loss': r.get('train_loss', math.nan),
               'l0': first_loss(metrics) if metrics.exists() else math.nan, 'wall_s': r['wall_s'], 'error': r.get('error')}
        with open(log, 'a') as f:
            f.write(json.dumps(row) + '\n')
        rows.append(row)
        walls.append(r['wall_s'])
        print(f'[rel-step]   {r["wall_s"]:.0f} s: held-out {row["val_loss"]:.3f}', flush=True)
    if not rows:
        return
    summ = rel_analyse(rows)
    md = rel_table(summ)
    (out / 'table.md').write_text(md + '\n')
    (out / 'summary.json').write_text(json.dumps(summ, indent=1, default=str))
    rel_plot(summ, out / 'rel-step')
    print(md)


if __name__ == '__main__':
    main()
