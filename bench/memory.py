"""Peak memory of a training step for each reparameterization vs the plain model, side by side.

Peak = persistent + step peak:
- persistent: the bytes of the parameters, buffers and optimizer state (counted from the tensors,
  identical on every device);
- step peak: the highest amount of memory allocated above the step's start during one step
  (activations saved for backward, gradients, temporaries). On CUDA it is
  ``torch.cuda.max_memory_allocated`` minus the allocation at the step's start; on CPU, where no
  allocator keeps statistics, it is replayed from the torch profiler's allocation and free events
  of the step (process RSS is useless here: glibc keeps freed memory, so it only ever grows).

Every variant lives in memory at once; steps are interleaved as in step_time.py and the median of
the repeated measurements is reported (they agree to the byte on CPU).

    python bench/memory.py                                   # CPU, tiny config (~1 min)
    python bench/memory.py --device cuda                     # GPU: 1.3B layer shapes, bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_args, build_model, describe_machine, interleaved, make_batch, make_optimizer, make_step,
    print_failures, resolve, synchronize, warm_up,
)

MiB = 2 ** 20


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def persistent_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters, buffers and optimizer state: what stays allocated between steps."""
    total = sum(tensor_bytes(p) for p in model.parameters()) + sum(tensor_bytes(b) for b in model.buffers())
    for state in optimizer.state.values():
        total += sum(tensor_bytes(v) for v in state.values() if isinstance(v, torch.Tensor))
    return total


def cpu_step_peak(step) -> int:
    """The step's peak of live CPU bytes above its start, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return profiled_peak(prof)


def profiled_peak(prof) -> int:
    """The peak of live CPU bytes above the profile's start, replayed from the memory events of a
    finished ``torch.profiler.profile(profile_memory=True)``."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'
              and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())  # stable: same-time events keep their recorded order
    live = peak = 0
    for e in events:
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def cuda_step_peak(step, device: str) -> int:
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument('--rounds', type=int, default=3, help='measured steps per variant')
    parser.add_argument('--out', help='also write the results as JSON here')
    args = parser.parse_args(argv)
    preset, variants = resolve(args)
    device = args.device

    torch.manual_seed(args.seed)
    batch = make_batch(preset, device, args.seed)
    steps, models, optimizers = {}, {}, {}
    for name in variants:
        models[name] = build_model(name, preset, device)
        optimizers[name] = make_optimizer(args.optimizer, models[name])
        steps[name] = make_step(models[name], optimizers[name], batch, preset, device, args.compile)
    failures = warm_up(steps, 1)  # creates the optimizer state: persistent from here on
    variants = [v for v in variants if v in steps]

    def measure(name: str) -> float:
        if device.startswith('cuda'):
            return float(cuda_step_peak(steps[name], device))
        return float(cpu_step_peak(steps[name]))

    step_peaks = interleaved(variants, args.rounds, measure)
    rows = []
    for name in variants:
        persistent = persistent_bytes(models[name], optimizers[name])
        step_peak = statistics.median(step_peaks[name])
        rows.append({'variant': name, 'persistent_bytes': persistent, 'step_peak_bytes': step_peak,
                     'peak_bytes': persistent + step_peak, 'step_peak_spread': max(step_peaks[name]) - min(step_peaks[name])})
    base = rows[0]
    for r in rows:
        r['ratio'] = r['peak_bytes'] / base['peak_bytes']
        r['step_ratio'] = r['step_peak_bytes'] / base['step_peak_bytes']

    print(f'\npeak memory, {describe_machine(device)}')
    print(f'preset: d={preset.d_model} N={preset.n_layers} heads={preset.n_heads} seq={preset.seq_len} '
          f'batch={preset.batch_size}x{preset.accum} microbatches vocab={preset.vocab_size} {"bf16 autocast" if preset.bf16 else "fp32"}{", torch.compile" if args.compile else ", eager"}, '
          f'optimizer {args.optimizer}; median of {args.rounds} interleaved steps\n')
    print(format_table(rows))
    print_failures(failures)
    if args.out:
        Path(args.out).write_text(json.dumps({'machine': describe_machine(device), 'preset': asdict(preset),
                                              'optimizer': args.optimizer, 'compile': args.compile, 'rows': rows,
                                              'failures': failures}, indent=2) + '\n')
    return 0


def format_table(rows: list[dict]) -> str:
    lines = ['| variant | persistent (MiB) | step peak (MiB) | peak (MiB) | peak vs plain | step peak vs plain |',
             '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["variant"]} | {r["persistent_bytes"] / MiB:.2f} | {r["step_peak_bytes"] / MiB:.2f} | '
                     f'{r["peak_bytes"] / MiB:.2f} | {r["ratio"]:.4f} | {r["step_ratio"]:.4f} |')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
