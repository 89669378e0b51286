"""``wesar-foundry demo``: WeSaR against Small init on a laptop, through llm-foundry's ``train()``.

Builds (once, cached in ``<out>/data``) the embedded default corpus, trains each method × seed with
the ``update_ratio_monitor`` and ``loss_spike_monitor`` callbacks and a JSONL metrics file,
evaluates held-out loss on the whole val split, and writes a report folder: the Figure-1-style
plot overlaying the runs, a Markdown table, and (with several learning rates) held-out loss
against learning rate, one curve per method.

By default each method runs at its own best learning rate for the demo's shape, read from a
reference sweep shipped beside this module (``demo_reference.json``, written by
``bench/demo_reference.py`` from ``bench/sigma_auto.py``'s results): WeSaR's gate scales the
effective step, so one shared lr favours whichever method it happens to suit. The report says
which comparison it makes, and where the lrs came from. Nothing is claimed in advance: the table
says what was measured.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wesar_foundry.commands.paper import GATE_PARAM_GROUPS, METHODS as PAPER_METHODS

# The paper's methods, plus WeSaR with σ chosen from the run's lr (sigma_rule): the interpolation is
# what a YAML writes, since the model builder sees only model:; and the learnable row and column
# multipliers on WeSaR's gate (issue 25), at WeSaR's σ².
METHODS = {**PAPER_METHODS,
           'wesar_auto': {'reparam': 'wesar', 'init_config': {'name': 'wesar_', 'target': 'he', 'sigma2': 'auto',
                                                              'lr': '${optimizer.lr}'}},
           'multipliers': {'reparam': 'multipliers', 'multipliers': 'row_column',
                           'init_config': {'name': 'wesar_', 'target': 'he', 'sigma2': 4e-5}}}


@dataclass
class DemoConfig:
    """What ``wesar-foundry demo`` runs (defaults chosen by ``bench/demo_defaults.py``)."""

    out: str = 'wesar-report'
    """Report folder (runs, metrics, plots, summary.md)."""
    data: str | None = None
    """Prepared data folder (built by ``prepare`` if missing, reused otherwise); None: ``<out>/data``
    (so ``wesar-report/data``, never ``prepare``'s own default ``wesar-data``)."""
    sources: list[str] = field(default_factory=lambda: ['docstrings'])
    """Corpus sources for ``prepare`` (docstrings, .txt/.jsonl files, hf:<name>)."""
    methods: list[str] = field(default_factory=lambda: ['wesar', 'small'])
    """Methods to compare: small, he, weight_norm, sigma_reparam, residual_scaling, wesar, wesar_auto, multipliers."""
    seeds: list[int] = field(default_factory=lambda: [17])
    """One run per seed and method."""
    lrs: list[float] | None = None
    """Peak learning rates, the same for every method (more than one draws held-out loss against lr);
    None: each method at its own best lr for the demo's shape from the shipped reference sweep."""
    steps: int = 200
    """Optimizer steps per run."""
    warmup: int = 10
    """Linear warmup steps (Rapid-like: short), then cosine to 10%."""
    d_model: int = 128
    """Hidden size."""
    n_layers: int = 8
    """Decoder layers."""
    n_heads: int = 4
    """Attention heads."""
    seq_len: int = 128
    """Tokens per sequence."""
    batch_size: int = 16
    """Sequences per step."""
    vocab_size: int = 4096
    """BPE vocabulary trained by ``prepare``."""
    max_chars: int | None = 4_000_000
    """Corpus size cap for ``prepare`` (characters)."""
    ratio_interval: int = 5
    """update_ratio_monitor logging interval (steps)."""

    def validate(self) -> None:
        """Refuse bad options before any data is built or any model trained."""
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f'demo --methods {",".join(bad) or "(empty)"}: allowed: {", ".join(METHODS)}')
        if self.lrs is not None and (not self.lrs or any(not (isinstance(lr, float) and 0 < lr < 1)
                                                         for lr in self.lrs)):  # None: each method's own lr
            raise ValueError(f'demo --lr/--lrs {self.lrs}: each learning rate must be a number in (0, 1)')
        for key in ('steps', 'd_model', 'n_layers', 'n_heads', 'seq_len', 'batch_size', 'ratio_interval'):
            if getattr(self, key) < 1:
                raise ValueError(f'demo --{key.replace("_", "-")} must be >= 1')
        if self.max_chars is not None and self.max_chars < 1:
            raise ValueError(f'demo --max-chars must be >= 1, got {self.max_chars}')
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f'demo --warmup {self.warmup} must be in [0, steps={self.steps})')
        if not self.seeds:
            raise ValueError('demo --seeds is empty')
        if self.d_model % self.n_heads:
            raise ValueError(f'demo --d-model {self.d_model} must be divisible by --n-heads {self.n_heads}')

    def data_dir(self) -> Path:
        """Where the demo's prepared data lives: ``--data``, else ``<out>/data``."""
        return Path(self.data) if self.data is not None else Path(self.out) / 'data'


# The reference sweep (bench/demo_reference.py writes it from bench/results/sigma_auto/table.json).
REFERENCE = Path(__file__).with_name('demo_reference.json')
# The fields a run must share with the reference for its numbers to apply.
SHAPE_KEYS = ('d_model', 'n_layers', 'n_heads', 'seq_len', 'batch_size', 'steps', 'warmup', 'vocab_size', 'sources',
              'max_chars')
# The lr of a method the reference did not sweep (the paper's WeSaR lr at this scale).
FALLBACK_LR = 1e-3


def load_reference(path: Path = REFERENCE) -> dict[str, Any]:
    """The shipped reference sweep: shape, source, and per method its held-out loss per lr and best lr."""
    return json.loads(Path(path).read_text())


def method_lrs(cfg: DemoConfig, ref: dict[str, Any]) -> dict[str, list[float]]:
    """The lr(s) each method runs at: ``cfg.lrs`` for all, else its best in ``ref`` (``FALLBACK_LR`` if absent)."""
    if cfg.lrs is not None:
        return {m: list(cfg.lrs) for m in cfg.methods}
    return {m: [float(ref['methods'][m]['best_lr']) if m in ref['methods'] else FALLBACK_LR] for m in cfg.methods}


def shape_differences(cfg: DemoConfig, ref: dict[str, Any]) -> list[str]:
    """The shape fields where this run differs from the reference's (empty: its numbers apply)."""
    return [f'{k} {getattr(cfg, k)} here, {ref["shape"].get(k)} there' for k in SHAPE_KEYS
            if getattr(cfg, k) != ref['shape'].get(k)]


def _source(ref: dict[str, Any]) -> str:
    return (f'source: {ref["source"]}, {ref["date"]}, seeds {", ".join(map(str, ref["seeds"]))}, '
            f'lrs {min(ref["lrs"]):g} to {max(ref["lrs"]):g}; {ref["report"]}')


def reference_line(cfg: DemoConfig, ref: dict[str, Any]) -> str | None:
    """The reference's best-vs-best held-out losses for this run's methods (None: other shape, or none swept)."""
    shown = [m for m in cfg.methods if m in ref['methods']]
    if shape_differences(cfg, ref) or not shown:
        return None
    base = 'small' if 'small' in ref['methods'] else None
    if base and base not in shown:
        shown.append(base)  # the baseline the others are measured against
    best = {m: ref['methods'][m]['held_out_loss'][f'{ref["methods"][m]["best_lr"]:g}'] for m in shown}
    parts = [f'{m} at its best lr {ref["methods"][m]["best_lr"]:g}: {best[m]["mean"]:.3f} ± {best[m]["std"]:.3f}'
             for m in shown]
    gaps = [f'{m} − {base} = {best[m]["mean"] - best[base]["mean"]:+.2f} nats' for m in shown if base and m != base]
    per_method = cfg.lrs is None  # then this run is that comparison, and the sentence before cites the source
    line = (f'{"The same comparison in" if per_method else "The fair comparison from"} the shipped sweep (held-out '
            f'loss, mean ± std over {len(ref["seeds"])} seeds, this shape): {"; ".join(parts)}'
            + (f'; gap: {", ".join(gaps)}' if gaps else '') + ('.' if per_method else f' ({_source(ref)}).'))
    if len(cfg.seeds) == 1:
        line += (f' This run has one seed: the sweep\'s seed std at those lrs reaches '
                 f'{max(v["std"] for v in best.values()):.2f} nats.')
    return line


def comparison(cfg: DemoConfig, ref: dict[str, Any]) -> str:
    """What the run compares, and where its lrs came from (the paragraph above the report's table)."""
    differs = shape_differences(cfg, ref)
    swept = [m for m in cfg.methods if m in ref['methods']]
    best = ', '.join(f'{m} {ref["methods"][m]["best_lr"]:g}' for m in swept)
    sweep_hint = '`--lrs 1e-3,3e-3,1e-2,3e-2` sweeps this shape'
    if cfg.lrs is None:
        text = [f'**Comparison:** each method at its own best lr from the shipped sweep ({best or "none swept"}; '
                f'{_source(ref)}). WeSaR\'s gate scales the effective step of W̄, so the methods\' best lrs differ; '
                'one shared lr would favour whichever method it happens to suit.']
        if differs:
            text.append(f'The shipped sweep was run at another shape ({"; ".join(differs)}): these lrs are its best '
                        f'there, not necessarily here; {sweep_hint}.')
        missing = [m for m in cfg.methods if m not in ref['methods']]
        if missing:
            text.append(f'No reference lr was available for {", ".join(missing)} (the sweep ran '
                        f'{", ".join(ref["methods"])}): run at {FALLBACK_LR:g}.')
    else:
        lrs = ', '.join(f'{lr:g}' for lr in cfg.lrs)
        why = f'in the shipped sweep: {best}' if swept else "WeSaR's gate scales its effective step"
        so = ('this measures the lr as much as the method' if len(cfg.lrs) == 1 else
              'compare each method at its best lr among these (the lr-sweep plot), not at one')
        text = [f'**Comparison:** all methods at the same lr{"s" if len(cfg.lrs) > 1 else ""} ({lrs}): a method\'s '
                f'best lr differs ({why}), so {so}.']
        if differs:
            text.append(f'The shipped reference sweep is for another shape ({"; ".join(differs)}), so it has no '
                        f'best-vs-best figure for this one; {sweep_hint}.')
    line = reference_line(cfg, ref)
    if line:
        text.append(line)
    return ' '.join(text)


def _say(msg: str) -> None:
    print(f'[demo] {msg}', flush=True)


def run_config(cfg: DemoConfig, data: Path, method: str, seed: int, lr: float, run_dir: Path) -> dict[str, Any]:
    """The llm-foundry train config of one demo run (the tiny YAML's shape, on CPU, fp32)."""
    loader = lambda split, shuffle: {  # noqa: E731
        'name': 'text', 'drop_last': split == 'train', 'num_workers': 0, 'prefetch_factor': None,
        'persistent_workers': False, 'pin_memory': False,
        'dataset': {'local': str(data), 'split': split, 'shuffle': shuffle, 'max_seq_len': cfg.seq_len,
                    'shuffle_seed': seed},
    }
    return {
        'run_name': run_dir.name,
        'seed': seed,
        'max_seq_len': cfg.seq_len,
        'model': {'name': 'wesar_llama', 'init_device': 'cpu', 'd_model': cfg.d_model, 'n_layers': cfg.n_layers,
                  'n_heads': cfg.n_heads, 'vocab_size': cfg.vocab_size, 'max_seq_len': cfg.seq_len,
                  'mlp_type': 'gelu', 'z_loss': 1e-4, 'attn_implementation': 'sdpa',
                  'use_train_metrics': False,  # the loss is logged anyway; saves two passes over the logits
                  **copy.deepcopy(METHODS[method])},
        'tokenizer': {'name': str(data / 'tokenizer'), 'kwargs': {'model_max_length': cfg.seq_len}},
        'train_loader': loader('train', True),
        'eval_loader': loader('val', False),
        'scheduler': {'name': 'cosine_with_warmup', 't_warmup': f'{cfg.warmup}ba', 'alpha_f': 0.1},
        # decoupled wd: 0.01 × lr is the paper's 0.01 in torch AdamW semantics.
        'optimizer': {'name': 'decoupled_adamw', 'lr': lr, 'betas': [0.9, 0.95], 'eps': 1e-8,
                      'weight_decay': 0.01 * lr, 'param_groups': copy.deepcopy(GATE_PARAM_GROUPS)},
        'algorithms': {'gradient_clipping': {'clipping_type': 'norm', 'clipping_threshold': 1.0}},
        'max_duration': f'{cfg.steps}ba',
        'eval_interval': f'{cfg.steps}ba',  # held-out loss once, at the end, on the whole val split
        'global_train_batch_size': cfg.batch_size,
        'device_train_microbatch_size': cfg.batch_size,
        'device_eval_batch_size': cfg.batch_size,
        'precision': 'fp32',
        'progress_bar': True,
        'log_to_console': False,
        'python_log_level': 'warning',
        'callbacks': {
            'update_ratio_monitor': {'interval': cfg.ratio_interval, 'per_matrix': 'last_layer'},
            'loss_spike_monitor': {'warmup': max(cfg.warmup, 20), 'window': 20},
            'gate_health_monitor': {'interval': cfg.ratio_interval},  # checks ratios on every measured step
        },
        'loggers': {'jsonl': {'path': str(run_dir / 'metrics.jsonl')}},
    }


def _last(series: list[tuple[int, float]], n: int = 1) -> float:
    vals = [v for _, v in series[-n:]]
    return sum(vals) / len(vals) if vals else float('nan')


def summarize(metrics_path: Path) -> dict[str, float]:
    """Final train loss (mean of the last 10 steps), held-out loss and perplexity, spike count,
    and the update-ratio spread (max/min across matrices: median over the run, and at the end)."""
    from wesar_foundry.commands.plot import read_metrics
    s = read_metrics(metrics_path).series
    spread_key = next((k for k in ('update_ratio/effective/uniformity/max_over_min',
                                   'update_ratio/raw/uniformity/max_over_min') if k in s), None)
    spread = [v for _, v in s.get(spread_key, [])] if spread_key else []
    val = _last(s.get('metrics/eval/LanguageCrossEntropy', []))
    return {
        'train_loss': _last(s.get('loss/train/ce', []), 10),
        'val_loss': val,
        'val_ppl': math.exp(val) if math.isfinite(val) else float('nan'),
        'spikes': _last(s.get('loss_spike/count', [(0, 0.0)])),
        'spread_median': statistics.median(spread) if spread else float('nan'),
        'spread_final': spread[-1] if spread else float('nan'),
    }


def _fmt(x: float, spec: str = '.3f') -> str:
    return format(x, spec) if math.isfinite(x) else 'n/a'


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown summary: one line per method × lr, mean ± std over seeds."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r['method'], r['lr']), []).append(r)
    lines = ['| method | lr | seeds | final train loss | held-out loss | held-out ppl | spikes | update-ratio max/min (median, final) | wall time (s) |',
             '|---|---|---|---|---|---|---|---|---|']
    for (method, lr), rs in groups.items():
        def ms(key: str, spec: str = '.3f') -> str:
            vals = [r[key] for r in rs]
            if len(vals) == 1:
                return _fmt(vals[0], spec)
            return f'{_fmt(statistics.mean(vals), spec)} ± {_fmt(statistics.stdev(vals), spec)}'
        lines.append(f'| {method} | {lr:g} | {len(rs)} | {ms("train_loss")} | {ms("val_loss")} | {ms("val_ppl", ".1f")} | '
                     f'{ms("spikes", ".0f")} | {ms("spread_median", ".2f")}, {ms("spread_final", ".2f")} | {ms("wall_s", ".0f")} |')
    return '\n'.join(lines)


def plot_lr_sweep(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Held-out loss against learning rate, one curve per method (mean over seeds, error bars)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r['method'] for r in rows):
        lrs = sorted({r['lr'] for r in rows if r['method'] == method})
        vals = [[r['val_loss'] for r in rows if r['method'] == method and r['lr'] == lr] for lr in lrs]
        mean = [statistics.mean(v) for v in vals]
        err = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
        ax.errorbar(lrs, mean, yerr=err, marker='o', capsize=3, label=method)
    ax.set_xscale('log')
    ax.set_xlabel('peak learning rate')
    ax.set_ylabel('held-out loss (nats/token)')
    ax.set_title('Held-out loss vs learning rate')
    ax.legend()
    fig.tight_layout()
    paths = [out.with_suffix('.png'), out.with_suffix('.svg')]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


def report(cfg: DemoConfig, ref: dict[str, Any], rows: list[dict[str, Any]], data: Path, figures: list[Path],
           total_s: float) -> str:
    """The Markdown of ``summary.md``: the setup, what is compared (before the table), the table, the plots."""
    return '\n'.join([
        '# wesar-foundry demo', '',
        f'{len(rows)} runs through llm-foundry `train()`: d_model {cfg.d_model}, {cfg.n_layers} layers, '
        f'{cfg.n_heads} heads, '
        f'seq {cfg.seq_len}, batch {cfg.batch_size}, {cfg.steps} steps, warmup {cfg.warmup}, cosine to 10%, '
        f'AdamW (0.9, 0.95), clip 1.0, z-loss 1e-4, fp32 on CPU. Data: {", ".join(cfg.sources)} '
        f'({data}). Held-out loss: cross-entropy over the whole val split after the last step.', '',
        comparison(cfg, ref), '',
        table(rows), '',
        '"update-ratio max/min" is the spread of ‖ΔW̄‖/‖W̄‖ across all matrices (1 = perfectly uniform). '
        'At this scale neither method is expected to spike (a small model trained for minutes on CPU).', '',
        *[f'![{p.stem}]({p.name})' for p in figures if p.suffix == '.png'], '',
        f'Total wall time: {total_s:.0f} s.',
    ]) + '\n'


def _data_note(cfg: DemoConfig, data: Path) -> str:
    corpus = ', '.join(cfg.sources) + (f', capped at {cfg.max_chars:,} characters' if cfg.max_chars else '')
    where = 'given by --data' if cfg.data is not None else "the demo's own, inside --out"
    return (f'data: {data} ({corpus}; {where}). '
            '`wesar-foundry prepare --out wesar-data` builds the full, uncapped corpus for training separately.')


def run_demo(cfg: DemoConfig, ref: dict[str, Any] | None = None) -> str:
    """Train every run, write the report, return the Markdown table (``ref``: the reference sweep; default:
    the shipped one)."""
    cfg.validate()
    ref = load_reference() if ref is None else ref
    lrs = method_lrs(cfg, ref)
    from wesar_foundry.data import PrepareConfig, prepare
    from wesar_foundry.files.atomic import write_text
    out, data = Path(cfg.out), cfg.data_dir()
    _say(_data_note(cfg, data))
    data = prepare(PrepareConfig(out=str(data), sources=cfg.sources, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len,
                                 max_chars=cfg.max_chars))
    from llmfoundry.command_utils import train
    from omegaconf import OmegaConf

    _say(comparison(cfg, ref))
    # Every method has the same number of lrs; methods interleaved, so a run cut short still compares them.
    runs = [(m, s, lrs[m][i]) for i in range(len(lrs[cfg.methods[0]])) for s in cfg.seeds for m in cfg.methods]
    (out / 'runs').mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i, (method, seed, lr) in enumerate(runs, 1):
        run_dir = out / 'runs' / f'{method}-lr{lr:g}-seed{seed}'
        run_dir.mkdir(parents=True, exist_ok=True)
        eta = ''
        if rows:
            per_run = (time.perf_counter() - start) / len(rows)
            eta = f', about {per_run * (len(runs) - len(rows)) / 60:.1f} min left'
        _say(f'run {i}/{len(runs)}: {method}, lr {lr:g}, seed {seed}, {cfg.steps} steps{eta}')
        t0 = time.perf_counter()
        train(OmegaConf.create(run_config(cfg, data, method, seed, lr, run_dir)))
        wall = time.perf_counter() - t0
        row = {'method': method, 'seed': seed, 'lr': lr, 'wall_s': wall, 'metrics': str(run_dir / 'metrics.jsonl'),
               **summarize(run_dir / 'metrics.jsonl')}
        rows.append(row)
        _say(f'  done in {wall:.0f} s: train loss {_fmt(row["train_loss"])}, held-out loss {_fmt(row["val_loss"])}, '
             f'spikes {row["spikes"]:.0f}, update-ratio max/min {_fmt(row["spread_median"], ".2f")}')

    from wesar_foundry.commands.plot import plot_runs
    figures = []
    first = [r for r in rows if r['seed'] == cfg.seeds[0]]  # Figure 1 shows the first seed, all methods overlaid
    if cfg.lrs is None:  # one figure: each method at its own lr
        figures += plot_runs([r['metrics'] for r in first], [f'{r["method"]} (lr {r["lr"]:g})' for r in first],
                             out / 'figure1.png', title='Loss and update ratios, each method at its own lr')
    else:  # one figure per shared lr
        for lr in cfg.lrs:
            picked = [r for r in first if r['lr'] == lr]
            figures += plot_runs([r['metrics'] for r in picked], [f'{r["method"]} (lr {lr:g})' for r in picked],
                                 out / f'figure1-lr{lr:.0e}.png', title=f'Loss and update ratios, lr {lr:g}')
        if len(cfg.lrs) > 1:
            figures += plot_lr_sweep(rows, out / 'lr-sweep.png')

    md = table(rows)
    total = time.perf_counter() - start
    write_text(out / 'summary.md', report(cfg, ref, rows, data, figures, total))
    write_text(out / 'runs.json', json.dumps({'config': asdict(cfg), 'lrs': lrs, 'comparison': comparison(cfg, ref),
                                              'reference': {k: ref[k] for k in ('source', 'report', 'date', 'seeds')},
                                              'runs': rows}, indent=1))
    _say(f'report: {out / "summary.md"} (total {total / 60:.1f} min)')
    print(comparison(cfg, ref), md, sep='\n\n')
    return md


if __name__ == '__main__':
    run_demo(DemoConfig(**json.loads(sys.argv[1])) if len(sys.argv) > 1 else DemoConfig())
