"""The measurements behind ``gate_health_monitor``'s defaults (min_fraction, max_ratio).

Each case is one ``wesar-foundry demo`` run (its model, data, schedule and optimizer: d=128,
N=8, seq 128, batch 16, warmup 10, cosine to 10%) through llm-foundry's ``train()``, with the
gates read and every matrix's effective update ratio measured after *every* step (so the table
holds the extremes a monitor at any interval could see). Cases:

- ``demo-wesar`` / ``demo-small``: the default demo (lr 1e-3; WeSaR at σ² = 4e-5, gates ≥ 2.47);
- ``demo-*-lr1e-2``: the top of the demo's ``--lrs`` sweep;
- ``low-gates``: WeSaR with every matrix gate below 1 at lr 1e-2 (σ² = 1e-2: α₀ = 0.88 for
  q/k/v/up/head, 0.22 for W_o, 0.16 for W_d), the run that should warn;
- ``low-gates-s2.56e-3``: the top of the paper's σ² grid at lr 1e-2 (α₀ = 1.75 for q/k/v/up/head,
  0.44 for W_o, 0.31 for W_d).

Per case: the smallest α/α₀ over all gates and steps (and which gate), how many gates changed
sign and the first step one did, the largest effective update ratio over all matrices after the
warmup and at any step, and the warnings the default rule gives at interval 1 and 10.

    OMP_NUM_THREADS=1 python bench/gate_health.py --data <prepared demo data> [--steps 150] [--cases ...]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from composer.core import Callback

from wesar_foundry.foundry.callbacks.update_ratio_monitor import UpdateRatioMonitor
from wesar_foundry.core.gate_health import Gate, GateHealthRule, GateHealthTracker, read_gates
from wesar_foundry.core.ratios import clean_name
from wesar_foundry.reparam import ReparamMatrix

CASES = {
    'demo-wesar': ('wesar', 1e-3, None),
    'demo-small': ('small', 1e-3, None),
    'demo-wesar-lr1e-2': ('wesar', 1e-2, None),
    'demo-small-lr1e-2': ('small', 1e-2, None),
    'low-gates': ('wesar', 1e-2, 1e-2),
    'low-gates-s2.56e-3': ('wesar', 1e-2, 2.56e-3),
}


class Recorder(Callback):
    """Every step: every scalar gate's value and every matrix's effective update ratio."""

    last: Recorder | None = None

    def __init__(self) -> None:
        Recorder.last = self  # llm-foundry builds it from the registry: this is how the script finds it
        self.monitor = UpdateRatioMonitor(interval=1, measure='effective', per_matrix='none', history=1)
        self.gates: list[Gate] = []
        self.tensors = []
        self.values: list[dict[str, float]] = []
        self.ratios: list[dict[str, float]] = []

    def fit_start(self, state, logger):
        for mname, m in state.model.named_modules():
            if isinstance(m, ReparamMatrix) and hasattr(m, 'alpha'):
                self.gates.append(Gate(f'{clean_name(mname)}.alpha', clean_name(mname)))
                self.tensors.append(m.alpha)
        self.initial = dict(zip((g.name for g in self.gates), read_gates(self.tensors)))
        self.monitor.fit_start(state, logger)

    def after_train_batch(self, state, logger):
        self.monitor.after_train_batch(state, logger)

    def batch_end(self, state, logger):
        self.values.append(dict(zip((g.name for g in self.gates), read_gates(self.tensors))))
        m = self.monitor.measure(state)
        self.ratios.append({e.name: r for e, r in m.ratios.items() if e.kind == 'effective' and e.is_matrix})


def analyse(rec: Recorder, warmup: int, rule: GateHealthRule) -> dict:
    out: dict = {}
    if rec.gates:
        worst = min(((v[g.name] / rec.initial[g.name], step + 1, g.name) for step, v in enumerate(rec.values)
                     for g in rec.gates))
        flipped = {g.name: next((s + 1 for s, v in enumerate(rec.values) if v[g.name] * rec.initial[g.name] <= 0), None)
                   for g in rec.gates}
        crossed = {n: s for n, s in flipped.items() if s is not None}
        per_role: dict[str, float] = {}
        for g in rec.gates:
            role = g.matrix.rsplit('.', 1)[-1]
            f = min(v[g.name] / rec.initial[g.name] for v in rec.values)
            per_role[role] = min(per_role.get(role, math.inf), f)
        out.update(min_fraction=worst[0], min_fraction_step=worst[1], min_fraction_gate=worst[2],
                   sign_changes=len(crossed), first_sign_change=min(crossed.values()) if crossed else None,
                   min_fraction_per_role=per_role,
                   alpha0_range=[min(rec.initial.values()), max(rec.initial.values())])
    every = [(r, s + 1, n) for s, rs in enumerate(rec.ratios) for n, r in rs.items() if math.isfinite(r)]
    after = [x for x in every if x[1] > warmup]
    out['max_ratio_after_warmup'] = list(max(after)) if after else None
    out['max_ratio'] = list(max(every)) if every else None
    # Per step: the smallest α/α₀ and the largest effective ratio (for a plot or a finer threshold).
    out['trajectory'] = [[s, min((v[g.name] / rec.initial[g.name] for g in rec.gates), default=None),
                          max((x for x in r.values() if math.isfinite(x)), default=None)]
                         for s, (v, r) in enumerate(zip(rec.values, rec.ratios), 1)]
    for interval in (1, 10):
        t = GateHealthTracker(rule)
        t.observe_initial(rec.initial)
        first = None
        kinds: dict[str, int] = {}
        for s, (v, r) in enumerate(zip(rec.values, rec.ratios), 1):
            if s % interval:
                continue
            for w in t.update(s, rec.gates, v, r):
                first = first or w.describe()
                kinds[w.condition] = kinds.get(w.condition, 0) + 1
        out[f'warnings_interval{interval}'] = kinds
        out[f'first_warning_interval{interval}'] = first
    return out


def run_case(name: str, args) -> dict:
    from llmfoundry.command_utils import train
    from llmfoundry.registry import callbacks
    from omegaconf import OmegaConf

    from wesar_foundry.commands.demo import DemoConfig, run_config

    method, lr, sigma2 = CASES[name]
    callbacks.register('bench_gate_recorder', func=Recorder)
    cfg = DemoConfig(steps=args.steps)
    run_dir = Path(args.out) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    tc = run_config(cfg, Path(args.data), method, 17, lr, run_dir)
    if sigma2 is not None:
        tc['model']['init_config']['sigma2'] = sigma2
    tc['callbacks'] = {'bench_gate_recorder': {}}
    tc['eval_interval'] = f'{10 * args.steps}ba'  # no held-out pass: not what is measured here
    tc['progress_bar'] = False
    t0 = time.perf_counter()
    train(OmegaConf.create(tc))
    rec = Recorder.last
    res = analyse(rec, cfg.warmup, GateHealthRule())
    res.update(case=name, method=method, lr=lr, sigma2=sigma2 or tc['model']['init_config'].get('sigma2'),
               seconds=round(time.perf_counter() - t0))
    (run_dir / 'gate_health.json').write_text(json.dumps(res, indent=1))
    print(json.dumps(res), flush=True)
    return res


def fmt(x, spec='.3g'):
    return 'n/a' if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--data', required=True)
    ap.add_argument('--steps', type=int, default=150)
    ap.add_argument('--cases', default=','.join(CASES))
    ap.add_argument('--out', default='bench/results/gate_health')
    ap.add_argument('--reuse', action='store_true', help='read the cases already measured in --out, not rerun them')
    args = ap.parse_args()
    rows = []
    for c in args.cases.split(','):
        done = Path(args.out) / c / 'gate_health.json'
        rows.append(json.loads(done.read_text()) if args.reuse and done.is_file() else run_case(c, args))
    header = ('| case | lr | σ² | α₀ range | min α/α₀ (gate, step) | gates that changed sign (first step) | '
              'max eff. ratio after warmup (matrix, step) | max eff. ratio, any step | '
              'default rule: warnings at interval 1 / 10 |')
    lines = [header, '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        a0 = r.get('alpha0_range')
        mf = (f'{r["min_fraction"]:.3g} ({r["min_fraction_gate"].split("model.")[-1]}, {r["min_fraction_step"]})'
              if 'min_fraction' in r else 'no gates')
        sc = f'{r["sign_changes"]} ({fmt(r["first_sign_change"], "d")})' if 'sign_changes' in r else 'no gates'
        ra = r['max_ratio_after_warmup'] or [None, None, '']
        lines.append(f'| {r["case"]} | {r["lr"]:g} | {fmt(r["sigma2"], "g")} | '
                     f'{f"{a0[0]:.3g}–{a0[1]:.3g}" if a0 else "–"} | {mf} | {sc} | '
                     f'{fmt(ra[0])} ({ra[2].split("model.")[-1]}, {ra[1]}) | {fmt((r["max_ratio"] or [None])[0])} | '
                     f'{r["warnings_interval1"] or "none"} / {r["warnings_interval10"] or "none"} |')
    table = '\n'.join(lines)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / 'table.md').write_text(table + '\n')


if __name__ == '__main__':
    main()
