"""Does ``compile_config: {}`` (Composer's torch.compile, default inductor backend) train every
reparameterization as eager does, and where does dynamo break the graph?

For each reparameterization, llm-foundry's ``train()`` runs the shipped tiny YAML
(``yamls/tiny/wesar.yaml``, d=128, N=4, seq 128) for ``--steps`` steps eager, then again with
``compile_config: {}``, on the embedded default corpus prepared into a temporary folder. It prints
the largest relative loss difference, dynamo's graph-break count and graphs compiled, and both
runs' wall times (compilation included). The suite checks the same with the ``aot_eager`` backend
(``tests/foundry/test_composer_models_compile.py``); this runs inductor's code generation too, minutes per model.

    python bench/compile.py                                 # every reparameterization (~15 min on 2 CPU cores)
    python bench/compile.py --reparams wesar,sigma_reparam
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The init each reparameterization is paired with in the paper (and in tests/foundry/test_composer_models_train.py).
INITS = {'wesar': {'name': 'wesar_'}, 'none': {'name': 'small'}, 'weight_norm': {'name': 'wesar_', 'sigma2': 16e-5},
         'sigma_reparam': {'name': 'wesar_', 'sigma2': 16e-5}, 'residual_scaling': {'name': 'small'}}


def run(data: str, reparam: str, steps: int, compiled: bool) -> tuple[list[float], float]:
    from llmfoundry.command_utils import train
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / 'yamls' / 'tiny' / 'wesar.yaml')
    cfg.variables.data_local = data
    cfg.model.reparam = reparam
    cfg.model.init_config = INITS[reparam]
    cfg.callbacks, cfg.loggers = {}, {'inmemory': {}}
    overrides = [f'max_duration={steps}ba', 'eval_interval=100000ba', 'console_log_interval=100000ba', 'save_folder=null',
                 f'run_name=compile-{reparam}'] + (['compile_config={}'] if compiled else [])
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    t0 = time.perf_counter()
    trainer = train(cfg)
    seconds = time.perf_counter() - t0
    memory = next(d for d in trainer.logger.destinations if type(d).__name__ == 'InMemoryLogger')
    return [float(v) for _, v in memory.data['loss/train/total']], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reparams', default=','.join(INITS), help=f'comma-separated, from: {", ".join(INITS)}')
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--out', help='also write the results as JSON here')
    args = parser.parse_args(argv)
    reparams = [r for r in args.reparams.split(',') if r]
    unknown = [r for r in reparams if r not in INITS]
    if unknown:
        raise SystemExit(f'--reparams: unknown {", ".join(unknown)}; allowed: {", ".join(INITS)}')

    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from wesar_foundry.data import PrepareConfig, prepare

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = str(prepare(PrepareConfig(out=f'{tmp}/data', max_chars=2_000_000)))
        for reparam in reparams:
            eager, t_eager = run(data, reparam, args.steps, compiled=False)
            torch._dynamo.reset()
            counters.clear()
            compiled, t_compiled = run(data, reparam, args.steps, compiled=True)
            rows.append({
                'reparam': reparam, 'max_rel_diff': max(abs(a - b) / abs(a) for a, b in zip(eager, compiled)),
                'graph_breaks': sum(counters['graph_break'].values()), 'break_reasons': dict(counters['graph_break']),
                'graphs': counters['stats'].get('unique_graphs', 0), 'eager_s': t_eager, 'compiled_s': t_compiled,
                'eager_losses': eager, 'compiled_losses': compiled})
            print(f'{reparam}: done', file=sys.stderr, flush=True)

    print(f'\ntorch.compile (inductor) vs eager, tiny YAML, {args.steps} steps, torch {torch.__version__}\n')
    print('| reparam | max rel. loss diff | graph breaks | graphs | eager (s) | compiled (s, incl. compilation) |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        print(f'| {r["reparam"]} | {r["max_rel_diff"]:.1e} | {r["graph_breaks"]} | {r["graphs"]} | '
              f'{r["eager_s"]:.1f} | {r["compiled_s"]:.1f} |')
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
