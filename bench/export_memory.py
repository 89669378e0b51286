"""Peak memory of ``wesar-foundry export`` against the model's fp32 size, sharded and monolithic.

Each export runs in a fresh child process. Its peak resident set (RSS) is the kernel's
``ru_maxrss`` of that child, read by the parent with ``os.wait4`` (the number
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` gives for a single waited-for child, without
the maximum over earlier children). The child also reports its RSS right after importing what
the export imports (torch, transformers, Composer, llm-foundry's registry through our package):
the **baseline**, memory that is not the export's. The table gives peak / S and
(peak − baseline) / S, where S is the model's fp32 size (its ``state.model`` tensors). Goal:
(peak − baseline) / S ≤ 1.5 for the sharded path.

The checkpoint is a real Composer sharded checkpoint from a two-rank FSDP2 run of the paper's
``yamls/pretrain/1b/wesar-rapid.yaml`` at d_model 2048, 16 heads, vocab 32000 and few layers
(4 by default: 332M parameters, S = 1.33 GB), 2 steps at sequence length 32 on CPU. ``--make``
runs it (once: ~3 min on 2 cores, a few GB of RAM, 4 GB on disk, as much again for the monolithic
copy, ~3 min more to write it); the monolithic checkpoint of the same state is then written from
it with torch's ``dcp_to_torch_save``, which rebuilds the ``{'state': ..., 'rng': ...}`` dict
Composer's monolithic save pickles (optimizer state included) instead of a second training run.

    python bench/export_memory.py --make /tmp/export-bench           # train, convert, measure
    python bench/export_memory.py --checkpoint /tmp/export-bench/ckpt   # measure again (reuses ckpt/ep0-ba2-rank0.pt)

``PYTHONPATH=<another checkout> python bench/export_memory.py ... --cases monolithic-fp32`` measures
another version of the package the same way (the children inherit the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / 'yamls' / 'pretrain' / '1b' / 'wesar-rapid.yaml'
CASES = {  # name → (source kind, export dtype)
    'sharded-fp32': ('sharded', 'fp32'),
    'sharded-bf16': ('sharded', 'bf16'),
    'monolithic-fp32': ('monolithic', 'fp32'),
}
GB = 1e9

_CHILD = r'''
import json, os, resource, sys, time

def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024

import torch
torch.set_num_threads(1)
import torch.distributed.checkpoint
import transformers
from composer.models import HuggingFaceModel
from wesar_foundry.export import export_checkpoint
baseline = rss()
src, out, dtype = sys.argv[1:4]
start = time.perf_counter()
export_checkpoint(src, out, dtype=dtype, force=True)
seconds = time.perf_counter() - start
print(json.dumps({'baseline': baseline, 'self_maxrss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  'seconds': seconds}))
'''


def model_fp32_bytes(checkpoint: Path) -> tuple[int, int]:
    """(fp32 bytes, parameters) of the ``state.model`` tensors, from the sharded checkpoint's metadata."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    metadata = FileSystemReader(checkpoint).read_metadata()
    numel = 0
    for key, md in metadata.state_dict_metadata.items():
        if key.startswith('state.model.') and isinstance(md, TensorStorageMetadata):
            n = 1
            for d in md.size:
                n *= d
            numel += n
    return 4 * numel, numel


def measure(source: Path, dtype: str, out: Path) -> dict:
    """Run one export in a child process; its peak RSS, baseline and wall time."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    log = out.with_suffix('.stderr')
    with open(log, 'w') as err:
        proc = subprocess.Popen([sys.executable, '-c', _CHILD, str(source), str(out), dtype], env=env,
                                cwd=out.parent, stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage alone
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f'export of {source} failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}')
    report = json.loads(stdout.strip().splitlines()[-1])
    report['peak'] = usage.ru_maxrss * 1024  # KiB on Linux
    report['out_bytes'] = sum(p.stat().st_size for p in out.iterdir() if p.suffix == '.safetensors')
    return report


def make_checkpoint(work: Path, layers: int, data: Path | None) -> Path:
    """The two-rank FSDP2 run; returns its save folder."""
    work.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = work / 'data'
        if not (data / 'prepare.json').exists():
            from wesar_foundry.data import PrepareConfig, prepare
            prepare(PrepareConfig(out=str(data), vocab_size=512, seq_len=64, max_chars=400_000))
    save_folder = work / 'ckpt'
    overrides = [
        f'variables.data_local={data}', f'variables.eval_data_local={data}',
        f'variables.tokenizer_name={data / "tokenizer"}', 'variables.max_seq_len=32',
        f'variables.save_folder={save_folder}', 'variables.run_name=export-bench',
        f'model.n_layers={layers}', 'model.init_device=cpu', 'precision=fp32', 'max_duration=2ba',
        'global_train_batch_size=2', 'device_train_microbatch_size=1', 'device_eval_batch_size=1',
        'eval_interval=2ba', 'eval_subset_num_batches=1', 'save_interval=2ba', 'console_log_interval=1ba',
        'tokenizer.kwargs.pad_token=null',
        # CPU, no worker processes: the ranks already take both cores.
        'train_loader.num_workers=0', 'train_loader.prefetch_factor=null', 'train_loader.persistent_workers=false',
        'train_loader.pin_memory=false', 'eval_loader.num_workers=0', 'eval_loader.prefetch_factor=null',
        'eval_loader.persistent_workers=false', 'eval_loader.pin_memory=false',
    ]
    composer = Path(sys.executable).with_name('composer')
    env = {**os.environ, 'FSDP_VERSION': '2', 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    cmd = [str(composer), '-n', '2', '-m', 'llmfoundry.cli.cli', 'train', str(YAML), *overrides]
    print('$ FSDP_VERSION=2 ' + ' '.join(cmd), flush=True)
    start = time.perf_counter()
    with open(work / 'train.log', 'w') as log:
        subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    print(f'two-rank run: {time.perf_counter() - start:.0f} s (log: {work / "train.log"})', flush=True)
    return save_folder


def make_monolithic(checkpoint: Path, out: Path) -> Path:
    """The monolithic Composer checkpoint of the same state (in a child: it loads everything)."""
    code = ('import sys; from torch.distributed.checkpoint.format_utils import dcp_to_torch_save; '
            'dcp_to_torch_save(sys.argv[1], sys.argv[2])')
    subprocess.run([sys.executable, '-c', code, str(checkpoint), str(out)], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--make', type=Path, help='work folder: run the two-rank training there first')
    parser.add_argument('--layers', type=int, default=4, help='decoder layers of the --make model (default 4)')
    parser.add_argument('--data', type=Path, help='prepared data for --make (default: prepare a small one)')
    parser.add_argument('--checkpoint', type=Path, help='a sharded checkpoint folder or its save folder')
    parser.add_argument('--monolithic', type=Path, help='monolithic .pt of the same state (default: made from it)')
    parser.add_argument('--cases', default=','.join(CASES), help=f'comma-separated, from {", ".join(CASES)}')
    parser.add_argument('--out', type=Path, help='also write the results as JSON here')
    args = parser.parse_args(argv)

    if args.make:
        args.checkpoint = make_checkpoint(args.make, args.layers, args.data)
    if args.checkpoint is None:
        parser.error('give --checkpoint or --make')
    sharded = args.checkpoint
    if not (sharded / '.metadata').exists():
        sharded = (sharded / 'latest-sharded-rank0').resolve()
    cases = [c for c in args.cases.split(',') if c]
    monolithic = args.monolithic or sharded.parent / f'{sharded.name}-rank0.pt'  # Composer's monolithic name
    if any(CASES[c][0] == 'monolithic' for c in cases) and not monolithic.exists():
        make_monolithic(sharded, monolithic)
    size, params = model_fp32_bytes(sharded)
    print(f'model: {params / 1e6:.1f}M parameters, fp32 size S = {size / GB:.3f} GB; checkpoint {sharded}')

    rows = []
    scratch = sharded.parent / 'export-bench-out'
    scratch.mkdir(exist_ok=True)
    for case in cases:
        kind, dtype = CASES[case]
        source = sharded if kind == 'sharded' else monolithic
        out = scratch / case
        r = measure(source, dtype, out)
        shutil.rmtree(out, ignore_errors=True)
        rows.append({'case': case, 'source': str(source), 'dtype': dtype, 'size': size, **r,
                     'peak_ratio': r['peak'] / size, 'above_baseline_ratio': (r['peak'] - r['baseline']) / size})
        print(f'{case}: peak {r["peak"] / GB:.3f} GB in {r["seconds"]:.0f} s', flush=True)

    print()
    print('| case | dtype | S (GB) | written (GB) | baseline (GB) | peak (GB) | peak / S | (peak − baseline) / S | time (s) |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f'| {r["case"]} | {r["dtype"]} | {size / GB:.3f} | {r["out_bytes"] / GB:.3f} | {r["baseline"] / GB:.3f} | '
              f'{r["peak"] / GB:.3f} | {r["peak_ratio"]:.2f} | {r["above_baseline_ratio"]:.2f} | {r["seconds"]:.0f} |')
    if args.out:
        args.out.write_text(json.dumps({'params': params, 'size': size, 'rows': rows}, indent=1))
        print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
