"""Step time of each reparameterization vs the plain model, measured side by side in one process.

One training step = forward, cross-entropy + z-loss, backward, optimizer step (Composer's
DecoupledAdamW by default), zero grads. All variants live in memory at once; the script times
one step of each per round, rotating the order every round, and reports per variant the median
step time and the median of the per-round ratios to the plain model (Small init, no
reparameterization: the paper's timing baseline).

    python bench/step_time.py                                   # CPU, tiny config (~2.5 min)
    python bench/step_time.py --device cuda                     # GPU: 1.3B layer shapes, bf16 autocast

On GPU it also reports throughput and MFU, with a stock transformers LlamaForCausalLM
(``hf_llama``, what llm-foundry's hf_causal_lm builds) of the same shape for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

if sys.platform.startswith('linux') and 'MALLOC_MMAP_THRESHOLD_' not in os.environ:
    # Re-run with glibc keeping freed memory: otherwise every large CPU tensor (the logits) is a
    # fresh mmap whose page faults cost ~10% of a tiny step, as system time that varies run to run.
    os.execve(sys.executable, [sys.executable] + sys.argv,
              {**os.environ, 'MALLOC_MMAP_THRESHOLD_': str(2 ** 32), 'MALLOC_TRIM_THRESHOLD_': str(2 ** 34)})

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    GOAL_RATIO, PAPER_OVERHEAD, add_common_args, build_model, describe_machine, flops_per_token, interleaved,
    make_batch, make_optimizer, make_step, now, paired_ratios, param_count, print_failures, quartiles, resolve,
    synchronize, warm_up,
)

# bf16 dense peak of the cards this is meant for (no sparsity), in TFLOP/s.
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument('--rounds', type=int, default=None, help='timed steps per variant (default: 40 cpu, 20 cuda)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps per variant first')
    parser.add_argument('--peak-tflops', type=float,
                        help='device peak for MFU (default: known bf16 peak of H100/H200/A100, else no MFU)')
    parser.add_argument('--out', help='also write the results as JSON here')
    args = parser.parse_args(argv)
    preset, variants = resolve(args)
    rounds = args.rounds or (40 if args.device == 'cpu' else 20)
    device = args.device

    torch.manual_seed(args.seed)
    batch = make_batch(preset, device, args.seed)
    steps, flops, params = {}, {}, {}
    for name in variants:
        model = build_model(name, preset, device)
        steps[name] = make_step(model, make_optimizer(args.optimizer, model), batch, preset, device, args.compile)
        flops[name] = flops_per_token(model, preset)
        params[name] = param_count(model)
    failures = warm_up(steps, max(args.warmup, 1))
    variants = [v for v in variants if v in steps]
    synchronize(device)

    # On CPU, the process's CPU time: other processes on a shared machine delay the wall clock, not
    # this (with one torch thread every op, backward included, runs on this thread).
    clock = now if device.startswith('cuda') else time.process_time

    def measure(name: str) -> float:
        synchronize(device)
        t0 = clock()
        steps[name]()
        synchronize(device)
        return clock() - t0

    times = interleaved(variants, rounds, measure)
    ratios = paired_ratios(times)
    peak = args.peak_tflops
    if peak is None and device.startswith('cuda'):
        card = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in card), None)

    tokens = preset.batch_size * preset.seq_len * preset.accum
    rows = []
    for name in variants:
        q1, med_ratio, q3 = quartiles(ratios[name])
        med_t = quartiles(times[name])[1]
        tflops = flops[name] * tokens / med_t / 1e12
        rows.append({
            'variant': name, 'params': params[name], 'step_ms': med_t * 1e3, 'ratio': med_ratio,
            'ratio_q1': q1, 'ratio_q3': q3, 'tokens_per_s': tokens / med_t, 'tflops': tflops,
            'mfu': tflops / peak if peak else None, 'paper_overhead': PAPER_OVERHEAD.get(name),
            'goal_ratio': GOAL_RATIO.get(name),
        })

    print(f'\nstep time, {describe_machine(device)}')
    print(f'preset: d={preset.d_model} N={preset.n_layers} heads={preset.n_heads} seq={preset.seq_len} '
          f'batch={preset.batch_size}x{preset.accum} microbatches vocab={preset.vocab_size} {"bf16 autocast" if preset.bf16 else "fp32"}{", torch.compile" if args.compile else ", eager"}, '
          f'optimizer {args.optimizer}; {rounds} interleaved rounds after {args.warmup} warm-up steps; '
          f'{"wall" if device.startswith("cuda") else "process CPU"} time per step\n')
    print(format_table(rows))
    print_failures(failures)
    if args.out:
        Path(args.out).write_text(json.dumps({
            'machine': describe_machine(device), 'preset': asdict(preset),
            'optimizer': args.optimizer, 'compile': args.compile, 'rounds': rounds, 'rows': rows, 'failures': failures,
            'times_s': times}, indent=2, default=str) + '\n')
    return 0


def format_table(rows: list[dict]) -> str:
    """Markdown: ratio = median over rounds of (variant step / plain step in the same round)."""
    mfu = any(r['mfu'] is not None for r in rows)
    head = '| variant | params | step (ms) | ratio vs plain [IQR] | paper | goal | tok/s | TFLOP/s |' + (' MFU |' if mfu else '')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for r in rows:
        paper = f'{1 + r["paper_overhead"]:.4f}' if r['paper_overhead'] is not None else ''
        goal = ''
        if r['goal_ratio'] is not None:
            goal = f'≤ {r["goal_ratio"]:.4f} ' + ('met' if r['ratio'] <= r['goal_ratio'] else '**missed**')
        line = (f'| {r["variant"]} | {r["params"] / 1e6:.2f}M | {r["step_ms"]:.1f} | '
                f'{r["ratio"]:.4f} [{r["ratio_q1"]:.3f}, {r["ratio_q3"]:.3f}] | {paper} | {goal} | '
                f'{r["tokens_per_s"]:,.0f} | {r["tflops"]:.3g} |')
        if mfu:
            line += f' {100 * r["mfu"]:.1f}% |' if r['mfu'] is not None else ' |'
        lines.append(line)
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
