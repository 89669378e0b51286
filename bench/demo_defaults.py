"""The sweep that chose ``wesar-foundry demo``'s defaults (shape, learning rate, warmup).

Each candidate shape is run with the demo's own learning-rate sweep mode (WeSaR and Small init,
one seed), so the numbers are what the demo itself would report. The table printed at the end
(and written to bench/results/demo_defaults.md) gives, per shape: seconds per step, and held-out
loss per method and lr. A shape is informative when it fits the 10-minute budget and the
methods separate at a given lr by more than seed noise (~0.02–0.07 nats at this scale, see
docs) — and the lr sweep shows where each method's optimum lies.

    python bench/demo_defaults.py [--steps 150] [--data wesar-data]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from wesar_foundry.commands.demo import DemoConfig, run_demo

SHAPES = {
    'd128-N8': dict(d_model=128, n_layers=8, n_heads=4),
    'd64-N16': dict(d_model=64, n_layers=16, n_heads=4),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=150)
    ap.add_argument('--data', default='wesar-data')
    ap.add_argument('--lrs', default='1e-3,3e-3,1e-2')
    ap.add_argument('--warmup', type=int, default=10)
    ap.add_argument('--shapes', default=','.join(SHAPES))
    ap.add_argument('--out', default='bench/results/demo_defaults')
    args = ap.parse_args()
    lrs = [float(x) for x in args.lrs.split(',')]
    lines = ['| shape | s/step | method | ' + ' | '.join(f'lr {lr:g}' for lr in lrs) + ' |',
             '|---|---|---|' + '---|' * len(lrs)]
    for name in args.shapes.split(','):
        out = Path(args.out) / name
        cfg = DemoConfig(out=str(out), data=args.data, steps=args.steps, warmup=args.warmup, lrs=lrs, **SHAPES[name])
        run_demo(cfg)
        rows = json.loads((out / 'runs.json').read_text())['runs']
        sec = statistics.median(r['wall_s'] for r in rows) / args.steps
        for method in cfg.methods:
            vals = [next(r['val_loss'] for r in rows if r['method'] == method and r['lr'] == lr) for lr in lrs]
            lines.append(f'| {name} | {sec:.2f} | {method} | ' + ' | '.join(f'{v:.3f}' for v in vals) + ' |')
    table = '\n'.join(lines)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / 'table.md').write_text(table + '\n')


if __name__ == '__main__':
    main()
