"""Write the demo's reference sweep (``wesar_foundry/commands/demo_reference.json``) from
``bench/results/sigma_auto/table.json`` (bench/README.md section 10).

The demo runs each method at its own best lr for the demo's shape, read from that file, and prints
the sweep's best-vs-best held-out losses beside a run at one shared lr. The package cannot read
``bench/`` (it is not installed), so the summary it needs is shipped as package data; this script
is the only writer of that file (a test checks the shipped file equals what it writes).

    python bench/demo_reference.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / 'bench' / 'results' / 'sigma_auto' / 'table.json'
OUT = ROOT / 'wesar_foundry' / 'commands' / 'demo_reference.json'

# The shape every run of the sweep had: DemoConfig's defaults at the sweep's commit (bdf8678,
# 2026-12-01), which spike_search.one_run used; its settings (lr<x>) set only the lr. table.json
# does not record them, so they are written here once.
SHAPE = {'d_model': 128, 'n_layers': 8, 'n_heads': 4, 'seq_len': 128, 'batch_size': 16, 'steps': 200, 'warmup': 10,
         'vocab_size': 4096, 'sources': ['docstrings'], 'max_chars': 4_000_000}
DATE = '2026-12-01'
# The methods the demo offers (wesar_auto_s1 is a bench-only control).
METHODS = ('wesar', 'wesar_auto', 'small')


def _argv_list(argv: list[str], option: str, kind: type) -> list:
    return [kind(x) for x in argv[argv.index(option) + 1].split(',')]


def build(table: dict[str, Any]) -> dict[str, Any]:
    """The reference: per method, held-out loss (mean, std, n over seeds) per lr and the best lr."""
    argv = table['argv']
    methods = {}
    for method in METHODS:
        s = table['summary'][method]
        per_lr = {f'{float(lr):g}': {'mean': round(v['mean'], 4), 'std': round(v['std'], 4), 'n': v['n']}
                  for lr, v in s['per_lr'].items() if math.isfinite(v['mean'])}
        methods[method] = {'best_lr': float(s['best_lr']), 'held_out_loss': per_lr}
    return {
        'source': 'bench/sigma_auto.py',
        'report': 'bench/README.md section 10, bench/results/sigma_auto/table.json',
        'date': DATE,
        'command': 'OMP_NUM_THREADS=2 python bench/sigma_auto.py ' + ' '.join(argv),
        'seeds': _argv_list(argv, '--seeds', int),
        'lrs': _argv_list(argv, '--lrs', float),
        'metric': 'held-out loss (nats/token) on the whole val split after the last step, mean and std over seeds',
        'shape': SHAPE,
        'methods': methods,
    }


def main() -> None:
    text = json.dumps(build(json.loads(TABLE.read_text())), indent=1) + '\n'
    sys.path.insert(0, str(ROOT))
    from wesar_foundry.files.atomic import write_text
    write_text(OUT, text)
    print(f'wrote {OUT.relative_to(ROOT)}')


if __name__ == '__main__':
    main()
