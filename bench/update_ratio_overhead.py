"""Step-time overhead of ``update_ratio_monitor``, as a ratio to the same run without it.

Three Composer Trainers on the tiny CPU config (the model and batch of yamls/tiny/wesar.yaml,
synthetic tokens, the YAML's optimizer and gradient clipping): no monitor, monitor at
``interval: 10``, monitor at ``interval: 1`` (other options at their defaults). They live in one
process and take turns one step at a time (rotating the order), so steps that are neighbours in
time share whatever load the machine has. Each step is timed from BATCH_START to BATCH_END (the
snapshot at AFTER_TRAIN_BATCH and the measurement at BATCH_END are inside). Reported: the
median seconds per step, and the median over 10-step cycles of the cycle's time ÷ the baseline's
over the same rounds (whole cycles, so interval 10 pays its one measured step in each).

    python bench/update_ratio_overhead.py            # about 2.5 min on 2 busy CPU cores
Goals: ≤ 1.05 at interval 10, ≤ 1.25 at interval 1.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
GOALS = {'interval 10': 1.05, 'interval 1': 1.25}


class StepTimer:
    """A callback (listed last) that times BATCH_START → BATCH_END."""

    def __init__(self) -> None:
        from composer.core import Callback

        timer = self

        class _Timer(Callback):
            def batch_start(self, state, logger):
                timer.t0 = time.perf_counter()

            def batch_end(self, state, logger):
                timer.times.append(time.perf_counter() - timer.t0)

        self.callback = _Timer()
        self.times: list[float] = []
        self.t0 = 0.0


def build(yaml: Path, monitor_kwargs: dict | None, steps: int):
    from composer import Trainer
    from composer.algorithms import GradientClipping
    from composer.optim import DecoupledAdamW

    from wesar_foundry.foundry.callbacks.update_ratio_monitor import UpdateRatioMonitor
    from wesar_foundry.foundry.composer_models import WeSaRLlamaComposerModel

    cfg = OmegaConf.to_container(OmegaConf.load(yaml), resolve=True)
    model_kw = {k: v for k, v in cfg['model'].items() if k != 'name'}
    torch.manual_seed(0)
    model = WeSaRLlamaComposerModel(**model_kw)
    o = cfg['optimizer']
    gates = [p for n, p in model.named_parameters() if n.endswith(('.alpha', '.g', '.gamma', '.row_mult', '.col_mult'))]
    rest = [p for n, p in model.named_parameters() if not n.endswith(('.alpha', '.g', '.gamma', '.row_mult', '.col_mult'))]
    opt = DecoupledAdamW([{'params': rest}, {'params': gates, 'weight_decay': 0.0}], lr=o['lr'],
                         betas=tuple(o['betas']), eps=o['eps'], weight_decay=o['weight_decay'])
    bs, seq, vocab = cfg['device_train_batch_size'], cfg['max_seq_len'], model_kw['vocab_size']
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (steps * bs, seq), generator=g)
    data = torch.utils.data.DataLoader([{'input_ids': r, 'labels': r} for r in ids], batch_size=bs)
    timer = StepTimer()
    callbacks = ([UpdateRatioMonitor(**monitor_kwargs)] if monitor_kwargs is not None else []) + [timer.callback]
    trainer = Trainer(model=model, train_dataloader=data, optimizers=opt, callbacks=callbacks, loggers=[],
                      algorithms=[GradientClipping(clipping_type='norm', clipping_threshold=1.0)],
                      device='cpu', precision='fp32', progress_bar=False, log_to_console=False, seed=0)
    return trainer, timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--yaml', default=str(ROOT / 'yamls' / 'tiny' / 'wesar.yaml'))
    parser.add_argument('--cycles', type=int, default=4, help='measured 10-step cycles per variant (default 4)')
    args = parser.parse_args()
    if args.cycles < 1:
        parser.error('--cycles must be >= 1')

    variants = {'no monitor': None, 'interval 10': {'interval': 10}, 'interval 1': {'interval': 1}}
    steps = args.cycles * 10 + 2
    runs = {name: build(Path(args.yaml), kw, steps) for name, kw in variants.items()}
    names = list(variants)
    for name in names:  # one unmeasured step each: first-step costs (allocator, optimizer state)
        runs[name][0].fit(duration='1ba')
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.cycles * 10):
        # One step per variant per round, order rotating: neighbours in time share the machine's load.
        for name in names[r % 3:] + names[:r % 3]:
            trainer, timer = runs[name]
            timer.times.clear()
            trainer.fit(duration='1ba')
            times[name].append(timer.times[-1])
    base = times['no monitor']
    label = Path(args.yaml).resolve()
    label = label.relative_to(ROOT) if label.is_relative_to(ROOT) else label
    print(f'update_ratio_monitor overhead: {label}, {args.cycles} cycles x 10 steps per variant, interleaved; '
          f'torch threads {torch.get_num_threads()}')
    print('| variant | median s/step | ratio to no monitor: median over 10-step cycles | min..max over cycles | goal |')
    print('|---|---|---|---|---|')
    for name in names:
        # Whole 10-step cycles, so interval 10 pays its one measured step in each.
        ratios = [sum(times[name][c * 10:(c + 1) * 10]) / sum(base[c * 10:(c + 1) * 10]) for c in range(args.cycles)]
        goal = f'<= {GOALS[name]:.2f}' if name in GOALS else ''
        print(f'| {name} | {statistics.median(times[name]):.4f} | {statistics.median(ratios):.3f} '
              f'| {min(ratios):.3f}..{max(ratios):.3f} | {goal} |')


if __name__ == '__main__':
    main()
