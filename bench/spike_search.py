"""Search for a CPU-sized setting where Small init spikes (by ``loss_spike_monitor``'s rule) and WeSaR does not.

Every run is one ``wesar-foundry demo`` run: the config comes from ``wesar_foundry.commands.demo.run_config``
(same model, data, optimizer, schedule, callbacks), trained by llm-foundry's ``train()``, summarized
by ``demo.summarize``. The only knobs added on top are overrides of that config dict, named in the
setting: ``z`` (the model's z_loss; the demo uses 1e-4) and ``sig`` (WeSaR's common σ²; the demo
uses 4e-5).

A setting is an underscore-separated spec, every field optional except that unknown keys are refused:

    d64_N16_T128_B8_lr3e-2_w30_z0_s150
    d: d_model   N: n_layers   h: n_heads (4)   T: seq_len   B: batch (sequences)   lr: peak lr
    w: warm-up steps (then cosine to 10%)   s: steps   z: z_loss (demo: 1e-4)   sig: WeSaR σ² (4e-5)
    wd: weight decay in torch AdamW's terms (demo: 0.01; Composer's decoupled value is wd·lr)
    dwd: Composer's decoupled weight decay as is, at every lr (the run decays by the same factor whatever its lr)

Missing fields take DemoConfig's defaults. All methods of a setting run at the same lr (the paper's
protocol). Per run it records: the spikes the monitor counted (``loss_spike/count``), the steps and
the matrices it named (its records: top update ratios at the spike step), non-finite steps, the
largest single-step rise of the training loss after the monitor's warm-up, the largest excess over
the trailing-window mean in window stds (the rule's statistic: a spike needs > k = 5 and a rise
> 2% of the mean), the held-out loss on the whole val split, and the wall time.

    OMP_NUM_THREADS=1 python bench/spike_search.py --methods small --seeds 1 --tag screen \
        --settings d64_N16_T128_B8_lr3e-2_w30_z0_s150,...
    OMP_NUM_THREADS=1 python bench/spike_search.py --settings <picked> --methods small,wesar,he --seeds 1,2,3

Resumable: a run whose ``result.json`` exists in ``--work`` is not trained again. ``--budget-min``
stops starting runs when the next one would not finish in time (estimated from the runs so far).
Writes ``<out>/table[-tag].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

DEFAULT_SETTINGS = [
    # The screen of bench/README.md section 8 (Small init, 1 seed): the paper's levers at CPU scale.
    # Deep (N=16), no z-loss, short warm-up, lr from Small's best (1e-2) to far past it (1e-1):
    'd64_N16_T128_B8_lr3e-2_w5_z0_s150',
    'd64_N16_T128_B8_lr1e-1_w5_z0_s150',
    'd64_N16_T128_B8_lr1e-1_w40_z0_s150',  # longer warm-up: the instability comes after the monitor's warm-up
    'd64_N16_T128_B8_lr3e-2_w40_z0_s150',
    'd64_N16_T128_B8_lr1e-2_w5_z0_s150',
    # Narrower and 4x the batch: less step-to-step noise in the loss, so a smaller jump clears k=5 stds.
    'd32_h2_N16_T128_B32_lr1e-2_w5_z0_s150',
    'd32_h2_N16_T128_B32_lr3e-2_w20_z0_s150',
    # Longer sequences, fewer of them (same 1,024 tokens per step as B8 x T128).
    'd64_N16_T256_B4_lr2e-2_w5_z0_s150',
    'd64_N16_T512_B2_lr2e-2_w5_z0_s150',
]
KEYS = {'d': ('d_model', int), 'N': ('n_layers', int), 'h': ('n_heads', int), 'T': ('seq_len', int),
        'B': ('batch_size', int), 'lr': ('lr', float), 'w': ('warmup', int), 's': ('steps', int),
        'z': ('z_loss', float), 'sig': ('sigma2', float), 'rw': ('ref_width', int), 'wd': ('weight_decay', float),
        'dwd': ('decoupled_weight_decay', float)}


def parse_setting(spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in spec.split('_'):
        key = next((k for k in sorted(KEYS, key=len, reverse=True) if part.startswith(k)
                    and _is_num(part[len(k):])), None)
        if key is None:
            raise SystemExit(f'setting {spec!r}: cannot read {part!r} (keys: {", ".join(KEYS)})')
        name, typ = KEYS[key]
        out[name] = typ(float(part[len(key):])) if typ is int else typ(part[len(key):])
    return out


def _is_num(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _fmt(x: float, spec: str = '.3f') -> str:
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else 'n/a'


def analyse(metrics: Path, rule_kw: dict[str, Any]) -> dict[str, Any]:
    """Offline numbers from the run's metrics, by the monitor's own rule (``wesar_foundry.core.spikes``)."""
    from wesar_foundry.commands.plot import loss_series, read_metrics
    from wesar_foundry.core.spikes import SpikeDetector, SpikeRule
    run = read_metrics(metrics)
    found = loss_series(run)
    losses = [v for _, v in found[1]] if found else []
    det = SpikeDetector(SpikeRule(**rule_kw))
    max_z, max_rise, max_jump, jump_step = -math.inf, -math.inf, -math.inf, None
    rises = [(b - a, i + 2) for i, (a, b) in enumerate(itertools.pairwise(losses)) if math.isfinite(a) and math.isfinite(b)]
    any_jump, any_step = max(rises) if rises else (math.nan, None)
    for i, x in enumerate(losses):
        v = det.update(x)
        if math.isfinite(v.mean) and math.isfinite(x):
            if v.std > 0:
                max_z = max(max_z, (x - v.mean) / v.std)
            max_rise = max(max_rise, x - v.mean)
        if (i >= rule_kw['warmup'] and i > 0 and math.isfinite(x) and math.isfinite(losses[i - 1])
                and x - losses[i - 1] > max_jump):
            max_jump, jump_step = x - losses[i - 1], i + 1
    gate = [v for _, v in run.series.get('gate_health/min_fraction', [])]
    return {'steps_logged': len(losses), 'offline_spikes': det.count, 'max_jump': max_jump, 'max_jump_step': jump_step,
            'max_jump_any': any_jump, 'max_jump_any_step': any_step,
            'max_z': max_z, 'max_rise_over_mean': max_rise, 'gate_min_fraction': min(gate) if gate else math.nan,
            'loss_at_end': statistics.mean(losses[-10:]) if losses else math.nan}


def one_run(setting: str, method: str, seed: int, work: Path, data_root: Path) -> dict[str, Any]:
    from llmfoundry.command_utils import train
    from omegaconf import OmegaConf

    from wesar_foundry.data import PrepareConfig, prepare
    from wesar_foundry.commands.demo import FALLBACK_LR, DemoConfig, run_config, summarize
    from wesar_foundry.foundry.callbacks.loss_spike_monitor import LossSpikeMonitor

    p = parse_setting(setting)
    if {'weight_decay', 'decoupled_weight_decay'} <= set(p):
        raise SystemExit(f'setting {setting!r}: wd (torch AdamW terms) and dwd (Composer\'s decoupled value) '
                         'set the same weight decay: give one')
    extra = {k: p.pop(k) for k in ('lr', 'z_loss', 'sigma2', 'ref_width', 'weight_decay', 'decoupled_weight_decay')
             if k in p}
    # One lr for every method (the demo's default is each method's own best lr; this protocol is not that).
    cfg = DemoConfig(methods=[method], seeds=[seed], lrs=[extra.get('lr', FALLBACK_LR)], **p)
    cfg.validate()
    data = prepare(PrepareConfig(out=str(data_root / f'T{cfg.seq_len}'), sources=cfg.sources, vocab_size=cfg.vocab_size,
                                 seq_len=cfg.seq_len, max_chars=cfg.max_chars))
    run_dir = work / setting / f'{method}-seed{seed}'
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / 'metrics.jsonl').unlink(missing_ok=True)
    conf = run_config(cfg, data, method, seed, cfg.lrs[0], run_dir)
    # Overrides of the demo's config (knobs the demo does not expose).
    if 'z_loss' in extra:
        conf['model']['z_loss'] = extra['z_loss']
    if 'weight_decay' in extra:  # decoupled_adamw's p·(1 − wd·lr_t/lr_0) is torch AdamW's p·(1 − lr_t·wd) at wd·lr
        conf['optimizer']['weight_decay'] = extra['weight_decay'] * cfg.lrs[0]
    if 'decoupled_weight_decay' in extra:
        conf['optimizer']['weight_decay'] = extra['decoupled_weight_decay']
    if 'sigma2' in extra and method == 'wesar':
        conf['model']['init_config']['sigma2'] = extra['sigma2']
    if method == 'wesar_auto':  # sig: the reference σ², i.e. the relative step ref_lr/σ_ref; rw: the width it holds at
        init = conf['model']['init_config']
        init.update({'ref_sigma2': extra['sigma2']} if 'sigma2' in extra else {})
        init.update({'ref_width': extra['ref_width']} if 'ref_width' in extra else {})
    conf['progress_bar'] = False
    (run_dir / 'config.json').write_text(json.dumps(conf, indent=1))
    t0 = time.perf_counter()
    error, spikes, spread = None, [], {}
    try:
        trainer = train(OmegaConf.create(conf))
        mon = next((cb for cb in trainer.state.callbacks if isinstance(cb, LossSpikeMonitor)), None)
        spikes = list(mon.spikes) if mon else []
        spread = multiplier_spread(trainer.state.model)
        trainer.close()
    except Exception as e:  # noqa: BLE001 -- a diverged run (NonFiniteLossError) is a result, not a crash
        error = f'{type(e).__name__}: {str(e)[:300]}'
        traceback.print_exc()
    wall = time.perf_counter() - t0
    mon_cfg = conf['callbacks']['loss_spike_monitor']
    rule_kw = {'window': mon_cfg.get('window', 50), 'warmup': mon_cfg.get('warmup', 50), 'k': mon_cfg.get('k', 5.0),
               'min_rise': mon_cfg.get('min_rise', 0.02)}
    metrics = run_dir / 'metrics.jsonl'
    summary = summarize(metrics) if metrics.exists() and metrics.stat().st_size else {}
    row = {'setting': setting, 'method': method, 'seed': seed, 'lr': cfg.lrs[0], 'wall_s': wall, 'error': error,
           'monitor_rule': rule_kw, **summary, **({'multipliers': spread} if spread else {}), **(analyse(metrics, rule_kw) if summary else {}),
           'spike_records': [{'step': s['step'], 'loss': s['loss'], 'window_mean': s['window_mean'],
                              'top_at': (s.get('ratios_at') or {}).get('top', [])[:3]} for s in spikes]}
    if error and 'NonFinite' in error:
        row['spikes'] = row.get('spikes', 0) or 0
        row['diverged'] = True
    (run_dir / 'result.json').write_text(json.dumps(row, indent=1))
    return row


def multiplier_spread(model: Any) -> dict[str, dict[str, float]]:
    """Per role, the learned multipliers at the end of a ``reparam: multipliers`` run ({} for any other):
    ``row_std``/``col_std`` (the spread of r̂ = r/rms(r), ĉ: 0 at init; mean over the role's matrices),
    ``row_min``/``col_min`` (the smallest entry of r̂, ĉ over them: 1 at init) and ``row_rms``/``col_rms``
    (the raw vectors' rms, 1 at init, largest over them: how far r and c went along the r·k, c/k
    direction, which the op does not see)."""
    from wesar_foundry.core.ratios import unit_rms
    from wesar_foundry.reparam.multipliers import MultiplierMatrix
    acc: dict[str, dict[str, list[float]]] = {}
    for mod in model.modules():
        if not isinstance(mod, MultiplierMatrix):
            continue
        for side, v in (('row', mod.row_mult), ('col', mod.col_mult)):
            if v is None:
                continue
            v = v.detach().float()
            u, a = unit_rms(v), acc.setdefault(mod.role, {})
            a.setdefault(f'{side}_std', []).append(float(u.std()))
            a.setdefault(f'{side}_min', []).append(float(u.min()))
            a.setdefault(f'{side}_rms', []).append(float(v.square().mean().sqrt()))
    pick = {'std': statistics.mean, 'min': min, 'rms': max}
    return {role: {k: pick[k.split('_')[1]](vs) for k, vs in a.items()} for role, a in acc.items()}


def ms(vals: list[float], spec: str = '.3f') -> str:
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return 'n/a'
    if len(vals) == 1:
        return _fmt(vals[0], spec)
    return f'{_fmt(statistics.mean(vals), spec)} ± {_fmt(statistics.stdev(vals), spec)}'


def table(rows: list[dict[str, Any]]) -> str:
    lines = [('| setting | method | seeds | spikes/run: mean (per seed) | largest 1-step loss rise after warm-up: max (per seed) | '
              'largest excess over window mean, in window stds (rule: > 5) | largest 1-step rise anywhere (step) | held-out loss | '
              'first spike: step, top-ratio matrices | wall s/run |'),
             '|---|---|---|---|---|---|---|---|---|---|']
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r['setting'], r['method']), []).append(r)
    for (setting, method), rs in groups.items():
        rs = sorted(rs, key=lambda r: r['seed'])
        sp = [r.get('spikes', math.nan) for r in rs]
        jumps = [r.get('max_jump', math.nan) for r in rs]
        div = ['div' if r.get('diverged') else '' for r in rs]
        first = next((r['spike_records'][0] for r in rs if r.get('spike_records')), None)
        first_s = (f'{first["step"]}: ' + ', '.join(f'{_short(n)} {v:.3g}' for n, v in first['top_at'][:2])
                   if first else '–')
        lines.append(
            f'| {setting} | {method} | {len(rs)} | {_fmt(statistics.mean(sp), ".2f") if all(map(math.isfinite, sp)) else "n/a"} '
            f'({", ".join(_fmt(s, ".0f") + (f" {d}" if d else "") for s, d in zip(sp, div))}) | '
            f'{_fmt(max(jumps) if all(map(math.isfinite, jumps)) else math.nan)} ({", ".join(_fmt(j) for j in jumps)}) | '
            f'{_fmt(max(r.get("max_z", math.nan) for r in rs), ".1f")} | '
            f'{", ".join(_jump_any(r) for r in rs)} | '
            f'{ms([r.get("val_loss", math.nan) for r in rs])} | '
            f'{first_s} | {_fmt(statistics.mean(r["wall_s"] for r in rs), ".0f")} |')
    return '\n'.join(lines)


def _jump_any(r: dict[str, Any]) -> str:
    return f'{_fmt(r.get("max_jump_any", math.nan), ".2f")} ({r.get("max_jump_any_step")})'


def _short(name: str) -> str:
    """'model.layers.15.mlp.down_proj' -> 'L15 down_proj'."""
    parts = name.split('.')
    layer = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ('layers', 'blocks', 'h')), None)
    leaf = [p for p in parts if p not in ('weight', 'W', 'alpha', 'model', 'base_model')]
    return (f'L{layer} ' if layer else '') + (leaf[-1] if leaf else name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--settings', default=','.join(DEFAULT_SETTINGS), help='comma-separated setting specs')
    ap.add_argument('--methods', default='small,wesar')
    ap.add_argument('--seeds', default='3', help='a count N (seeds 1..N) or a comma list of seeds')
    ap.add_argument('--budget-min', type=float, default=75.0, help='stop starting runs past this wall time')
    ap.add_argument('--work', default='/tmp/wesar-spike-search', help='run folders (metrics, result.json)')
    ap.add_argument('--data-root', default=None, help='prepared data, one folder per seq len (default: <work>/data)')
    ap.add_argument('--out', default='bench/results/spike_search')
    ap.add_argument('--tag', default='', help='suffix of the table files (table-<tag>.md)')
    args = ap.parse_args()

    os.environ.setdefault('OMP_NUM_THREADS', '1')
    import torch
    torch.set_num_threads(1)

    settings = [s for s in args.settings.split(',') if s]
    for s in settings:
        parse_setting(s)
    methods = args.methods.split(',')
    seeds = list(range(1, int(args.seeds) + 1)) if ',' not in args.seeds else [int(x) for x in args.seeds.split(',')]
    work = Path(args.work)
    data_root = Path(args.data_root) if args.data_root else work / 'data'
    runs = [(st, m, sd) for st in settings for sd in seeds for m in methods]
    rows, start, trained, skipped = [], time.perf_counter(), [], 0
    for i, (st, m, sd) in enumerate(runs, 1):
        res = work / st / f'{m}-seed{sd}' / 'result.json'
        if res.exists():
            row = json.loads(res.read_text())
            metrics = res.parent / 'metrics.jsonl'
            if 'max_jump_any' not in row and metrics.exists():  # written by an older version of this script
                row.update(analyse(metrics, row['monitor_rule']))
            rows.append(row)
            print(f'[spikes] {i}/{len(runs)} {st} {m} seed {sd}: done before, skipped', flush=True)
            continue
        elapsed = time.perf_counter() - start
        est = statistics.mean(trained) if trained else 0.0
        if elapsed + est > args.budget_min * 60:  # not started; finished runs further on still count
            skipped += 1
            continue
        print(f'[spikes] {i}/{len(runs)} {st} {m} seed {sd} (elapsed {elapsed / 60:.1f} min)', flush=True)
        row = one_run(st, m, sd, work, data_root)
        trained.append(row['wall_s'])
        rows.append(row)
        print(f'[spikes]   {row["wall_s"]:.0f} s: spikes {row.get("spikes")}, max 1-step rise {_fmt(row.get("max_jump", math.nan))}'
              f' at step {row.get("max_jump_step")}, max z {_fmt(row.get("max_z", math.nan), ".1f")}, held-out '
              f'{_fmt(row.get("val_loss", math.nan))}{", " + row["error"][:120] if row.get("error") else ""}', flush=True)

    if skipped:
        print(f'[spikes] budget {args.budget_min:g} min: {skipped} runs not started', flush=True)
    md = table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f'table-{args.tag}' if args.tag else 'table'
    (out / f'{stem}.md').write_text(md + '\n')
    (out / f'{stem}.json').write_text(json.dumps({'argv': sys.argv[1:], 'runs': rows}, indent=1, default=str))
    print(md)


if __name__ == '__main__':
    main()
