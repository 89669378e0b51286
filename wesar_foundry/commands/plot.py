"""The paper's Figure 1 from logged metrics: loss with spikes, update ratios, uniformity.

Reads the ``jsonl`` logger's files, Composer's ``file`` logger text, and CSV exports: W&B
(wide: a step column such as ``Step``/``_step`` and one column per metric, ``"<run> - <key>"``
headers included) and MLflow (long: ``key``, ``value``, ``step`` columns).
"""

from __future__ import annotations

import csv
import json
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wesar_foundry.core.roles import infer_layer, infer_role
from wesar_foundry.files.remote import download_file, is_uri
from wesar_foundry.core.spikes import SpikeRule, detect_spikes

Series = list[tuple[int, float]]

LOSS_KEYS = ('loss/train/total', 'loss/train/ce', 'train/loss', 'loss')
KINDS = ('auto', 'effective', 'raw')
DEFAULT_MATRICES = ('last:down', 'last:up')
_STEP_COLUMNS = ('step', 'Step', '_step', 'trainer/global_step', 'time/batch', 'batch')
_FILE_LOGGER_LINE = re.compile(r'^\[metric\]\[batch=(\d+)\]: (.+?): (\S+)\s*$')


@dataclass
class Run:
    """One run's metrics: every key's (step, value) series, sorted by step."""

    series: dict[str, Series]
    """Metric key → [(step, value), ...]."""
    name: str | None = None
    """The run name the file records, if any."""
    path: Path | None = field(default=None)
    """Where it was read from."""


def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)  # 'nan' / 'inf' strings as the jsonl logger writes them
    except (TypeError, ValueError):
        return None


def _finish(raw: dict[str, dict[int, float]]) -> dict[str, Series]:
    return {k: sorted(v.items()) for k, v in raw.items() if v}


def _read_jsonl(path: Path) -> Run:
    raw: dict[str, dict[int, float]] = {}
    name = None
    for n, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}:{n}: not a JSON line ({e.msg})') from None
        if 'run_name' in obj and name is None:
            name = obj['run_name']
        step = obj.get('step')
        if step is None:
            continue
        for k, v in obj.items():
            x = _num(v)
            if k != 'step' and x is not None:
                raw.setdefault(k, {})[int(step)] = x
    return Run(_finish(raw), name, path)


def _read_file_logger(path: Path) -> Run:
    raw: dict[str, dict[int, float]] = {}
    for line in path.read_text(encoding='utf-8', errors='replace').splitlines():
        m = _FILE_LOGGER_LINE.match(line)
        if m and (x := _num(m.group(3))) is not None:
            raw.setdefault(m.group(2), {})[int(m.group(1))] = x
    return Run(_finish(raw), None, path)


def _read_csv(path: Path) -> Run:
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f'{path}: empty CSV')
    cols = list(rows[0].keys())
    raw: dict[str, dict[int, float]] = {}
    name = None
    if {'key', 'value', 'step'} <= set(cols):  # MLflow metric history: one row per (key, step)
        for r in rows:
            x = _num(r['value'])
            if x is not None and r['step'] not in ('', None):
                raw.setdefault(r['key'], {})[int(float(r['step']))] = x
        return Run(_finish(raw), None, path)
    step_col = next((c for c in _STEP_COLUMNS if c in cols), None)
    if step_col is None:
        raise ValueError(f'{path}: no step column; expected one of {", ".join(_STEP_COLUMNS)} '
                         f'(or key,value,step for MLflow), got {", ".join(cols[:8])}')
    for c in cols:
        if c == step_col or c.endswith(('__MIN', '__MAX')) or c.startswith('_'):
            continue
        key = c
        if ' - ' in c:  # W&B panel export: "<run name> - <metric key>"
            name, key = c.split(' - ', 1)
        for r in rows:
            x = _num(r.get(c))
            if x is not None and r[step_col] not in ('', None):
                raw.setdefault(key, {})[int(float(r[step_col]))] = x
    return Run(_finish(raw), name, path)


def read_metrics(path: str | Path) -> Run:
    """Read one run's metrics file (jsonl logger, Composer file logger, W&B or MLflow CSV), local
    or on an object store (``s3://<bucket>/<run>/metrics.jsonl``: downloaded to a temporary file)."""
    if is_uri(path):
        with tempfile.TemporaryDirectory(prefix='wesar-plot-') as tmp:
            name = path.rstrip('/').rsplit('/', 1)[-1]
            local = download_file(path, Path(tmp) / name)
            try:
                run = read_metrics(local)
            except ValueError as e:  # name the object, not the temporary copy
                raise ValueError(str(e).replace(str(local), path)) from None
        run.path = Path(path.split('://', 1)[1])  # for labels: <bucket>/<run>/metrics.jsonl
        return run
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'metrics file not found: {path}')
    suffix = path.suffix.lower()
    if suffix in ('.jsonl', '.json'):
        run = _read_jsonl(path)
    elif suffix == '.csv':
        run = _read_csv(path)
    else:
        run = _read_file_logger(path)
    if not run.series:
        raise ValueError(f'{path}: no metrics found (expected the jsonl logger, Composer file logger, '
                         'or a W&B/MLflow CSV export)')
    return run


def loss_series(run: Run) -> tuple[str, Series] | None:
    """The training loss, indexed by optimizer step t (1-based) like the update ratios.

    Composer logs batch t's loss before advancing its timestamp, i.e. at step t − 1: shift it.
    """
    for k in LOSS_KEYS:
        if k in run.series:
            shift = 1 if k.startswith('loss/train/') else 0
            return k, [(s + shift, v) for s, v in run.series[k]]
    return None


def ratio_kind(run: Run, kind: str = 'auto') -> str | None:
    """Which update-ratio kind to plot: effective if logged (comparable across methods), else raw."""
    if kind not in KINDS:
        raise ValueError(f'kind={kind!r}; allowed: {", ".join(KINDS)}')
    kinds = [kind] if kind != 'auto' else ['effective', 'raw']
    for k in kinds:
        if any(key.startswith(f'update_ratio/{k}/') for key in run.series):
            return k
    return None


def resolve_matrices(run: Run, specs: Sequence[str], kind: str) -> dict[str, str]:
    """``{label: metric key}`` for specs ``'<layer>:<role>'`` (layer an int or ``last``) or a name regex."""
    prefix = f'update_ratio/{kind}/matrix/'
    names = [k[len(prefix):] for k in run.series if k.startswith(prefix)]
    layers = [layer for n in names if (layer := infer_layer(n)) is not None]
    out: dict[str, str] = {}
    for spec in specs:
        m = re.fullmatch(r'(last|\d+):(\w+)', spec)
        if m:
            layer = (max(layers) if layers else None) if m.group(1) == 'last' else int(m.group(1))
            hits = [n for n in names if infer_layer(n) == layer and infer_role(n) == m.group(2)]
            label = f'{"W_" + m.group(2)} (layer {layer})'
        else:
            try:
                pattern = re.compile(spec)
            except re.error as e:
                raise ValueError(f'matrix {spec!r} is neither <layer>:<role> nor a valid regex: {e}') from None
            hits = [n for n in names if pattern.search(n)]
            label = spec
        for n in hits[:1]:
            out[label] = prefix + n
    return out


def _spike_points(run: Run, loss: Series) -> tuple[list[tuple[int, float]], str]:
    if 'loss_spike/loss' in run.series:
        return list(run.series['loss_spike/loss']), 'spikes'
    starts = detect_spikes([v for _, v in loss], SpikeRule())
    return [loss[i] for i in starts], 'spikes (offline rule)'


def _outputs(out: str | Path) -> list[Path]:
    out = Path(out)
    base = out.with_suffix('') if out.suffix.lower() in ('.png', '.svg') else out
    return [base.with_suffix('.png'), base.with_suffix('.svg')]


def plot_runs(metrics_paths: Sequence[str | Path], labels: Sequence[str] | None = None, out: str | Path = 'fig.png',
              matrices: Sequence[str] = DEFAULT_MATRICES, kind: str = 'auto', title: str | None = None) -> list[Path]:
    """Draw Figure 1 for one or several runs; write ``<out>.png`` and ``<out>.svg``; return their paths.

    Panels: loss with spikes marked (the ``loss_spike_monitor``'s records, else the same rule
    applied offline); update ratios of ``matrices`` (default: last layer's W_d and W_u), log
    scale; the uniformity figure max/min of the update ratios across matrices, log scale.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (used as matplotlib.ticker)

    if not metrics_paths:
        raise ValueError('plot: give at least one metrics file')
    if labels is not None and len(labels) != len(metrics_paths):
        raise ValueError(f'plot: {len(labels)} labels for {len(metrics_paths)} metrics files')
    if kind not in KINDS:
        raise ValueError(f'kind={kind!r}; allowed: {", ".join(KINDS)}')
    runs = [read_metrics(p) for p in metrics_paths]
    if labels is None:
        labels = [r.name or (r.path.parent.name if r.path.stem == 'metrics' else r.path.stem) for r in runs]

    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True, constrained_layout=True)
    ax_loss, ax_ratio, ax_uni = axes
    styles = ['-', '--', ':', '-.']
    drew_ratio = drew_uni = False
    for i, (run, label) in enumerate(zip(runs, labels)):
        color = f'C{i % 10}'
        found = loss_series(run)
        if found is not None:
            key, loss = found
            ax_loss.plot([s for s, _ in loss], [v for _, v in loss], color=color, lw=1, label=label)
            points, what = _spike_points(run, loss)
            if points:
                ax_loss.scatter([s for s, _ in points], [v for _, v in points], marker='x', s=60, color=color,
                                zorder=3, label=f'{label}: {len(points)} {what}')
        k = ratio_kind(run, kind)
        if k is None:
            continue
        for j, (mlabel, key) in enumerate(resolve_matrices(run, matrices, k).items()):
            pts = [(s, v) for s, v in run.series[key] if v > 0 and math.isfinite(v)]
            ax_ratio.plot([s for s, _ in pts], [v for _, v in pts], color=color, ls=styles[j % len(styles)], lw=1,
                          label=f'{label}: {mlabel}')
            drew_ratio = True
        uni = run.series.get(f'update_ratio/{k}/uniformity/max_over_min')
        if uni:
            pts = [(s, v) for s, v in uni if math.isfinite(v)]
            ax_uni.plot([s for s, _ in pts], [v for _, v in pts], color=color, lw=1, label=label)
            drew_uni = True
    ax_loss.set_ylabel('training loss')
    ax_loss.legend(fontsize=8)
    ax_ratio.set_ylabel('update ratio ‖ΔW‖/‖W‖')
    if drew_ratio:
        ax_ratio.set_yscale('log')
        ax_ratio.legend(fontsize=8)
    else:
        ax_ratio.text(0.5, 0.5, 'no per-matrix update ratios logged', ha='center', transform=ax_ratio.transAxes)
    ax_uni.set_ylabel('max/min update ratio\nacross matrices')
    if drew_uni:
        ax_uni.set_yscale('log')
        # Spreads usually sit inside one decade: label 1-2-5 ticks, and show 1 (= uniform).
        ax_uni.set_ylim(bottom=1.0)
        ax_uni.axhline(1.0, color='grey', linestyle=':', linewidth=1)
        ax_uni.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_uni.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax_uni.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax_uni.legend(fontsize=8)
    else:
        ax_uni.text(0.5, 0.5, 'no uniformity figure logged', ha='center', transform=ax_uni.transAxes)
    ax_uni.set_xlabel('optimizer step')
    if title:
        fig.suptitle(title)
    paths = _outputs(out)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths
