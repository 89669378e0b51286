"""One command for new GPUs: does the whole GPU path work, and what does WeSaR cost there?

    FSDP_VERSION=2 python bench/gpu_check.py --out gpu_check.json     # every visible GPU, ~5-10 min
    python bench/gpu_check.py --out gpu_check-cpu.json                # no CUDA: 2 gloo ranks, CPU shapes

The shipped 1.3B Rapid configs (``wesar_foundry.commands.paper.train_config('1b', 'wesar' | 'small', 'rapid')``:
WeSaR, and the plain model, reparam none with Small init), shrunk by overrides only (fewer layers, a
short run, a locally built tokenizer and corpus), are trained one after the other through
llm-foundry's ``train()`` in one ``composer -n <ranks>`` launch (``FSDP_VERSION=2``): FSDP2 over all
local GPUs, bf16 (``precision: amp_bf16`` plus the YAML's FSDP mixed precision), activation
checkpointing, ``torch.compile`` (``compile_config: {}``), sharded checkpoints, the shipped monitors
and the in-training merged export (``wesar_hf_checkpointer``). Then, per model:

- **step time**: median wall time of the timed steps (after the compile/warm-up steps), each step
  from ``BATCH_START`` to ``BATCH_END`` with the device synchronized at both ends, slowest rank;
- **MFU**: the Composer model's ``flops_per_batch`` (per device) / step time / the card's bf16 peak
  (Composer's own table, ``speed_monitor.get_gpu_flops_available``, by device name; ``n/a`` when
  unknown, or ``--peak-tflops``);
- **peak memory** over the profiled steps, highest rank: on CUDA ``max_memory_allocated`` minus what
  was allocated before the run started; on CPU the local shards of parameters, buffers, gradients and
  optimizer state plus the profiler's replayed allocations (``memory.profiled_peak``);
- **the gated ops' share of the step** from ``torch.profiler`` over the profiled steps (bench/README.md,
  section 11): time inside the gated matrices' ops of ``wesar_foundry/reparam/functional.py`` (CPU time
  on CPU, kernel time on CUDA) over the steps' wall time, and the part of it outside their matmuls;
- **export**: the last sharded checkpoint → ``wesar_foundry.export.export_checkpoint`` → loaded with
  plain transformers in fp32 → logits on a fixed batch against the trained model's own logits (and
  the same for the in-training export), tolerance ``LOGITS_RTOL`` (the trained model computes with
  bf16 parameters).

It prints one table, writes JSON (``--out``) and exits non-zero if any check fails.

**CPU mode** (no CUDA, or ``--cpu``) is the same code at CPU sizes: 2 gloo ranks, ``precision: fp32``
(Composer allows nothing else on CPU) with the YAML's bf16 FSDP mixed-precision policy kept,
``init_device: cpu`` (Composer's FSDP2 meta init calls ``to_empty(device='cuda')``), compile backend
``aot_eager`` (inductor's code generation takes minutes per model on a small CPU). The suite runs it
(``tests/distributed/test_gpu_check.py``). On gloo FSDP2 sums gradients instead of averaging them
(pytorch issue 162338): harmless for what is checked here.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wesar_foundry.commands.paper import SEQ_LEN, SIZES, VOCAB  # noqa: E402

# The two runs: our name → the paper method (wesar_foundry.commands.paper.METHODS) whose 1.3B Rapid YAML it is.
MODELS = {"plain": "small", "wesar": "wesar"}
# Relative RMS error ‖Δ‖/‖ref‖ allowed between the trained model's logits (bf16 parameters under the
# YAML's FSDP mixed precision, on CPU and GPU alike) and the fp32 logits of its fp32/bf16 export.
# bf16 rounds each weight and activation to 2^-9 relative; measured 3e-3 (WeSaR) and 5e-3 (plain) at CPU
# shapes, so 6x room for other kernels and larger sums on GPUs. A wrong merge (a gate left out:
# α ≈ 5 at σ² 4e-5, He init) is off by O(1).
LOGITS_RTOL = 3e-2
FIXED_BATCH_SEED = 5
MiB = 2 ** 20


@dataclass(frozen=True)
class Shapes:
    """Model and batch sizes of one check."""

    n_layers: int
    """Decoder layers (the paper's 1.3B has 24)."""
    d_model: int
    """Hidden size."""
    n_heads: int
    """Attention heads."""
    seq_len: int
    """Tokens per sequence."""
    vocab_size: int
    """Model vocabulary (the locally built tokenizer is smaller)."""
    microbatch: int
    """Sequences per device per microbatch."""
    accum: int = 2
    """Microbatches per optimizer step (gradient accumulation runs)."""


@dataclass(frozen=True)
class Mode:
    """What a GPU check and its CPU rehearsal differ in: sizes, precision, init device, compile backend."""

    device: str
    """``gpu`` or ``cpu``."""
    ranks: int
    """Processes (one per GPU)."""
    precision: str
    """Composer precision: ``amp_bf16`` on GPU; ``fp32`` on CPU, the only one Composer allows there."""
    init_device: str
    """``meta`` (the YAML's) on GPU; ``cpu`` on CPU, where Composer's FSDP2 meta init cannot run."""
    compile_config: dict
    """``{}`` (inductor) on GPU; ``{backend: aot_eager}`` on CPU (inductor codegen: minutes per model)."""
    shapes: Shapes
    """Sizes."""
    tokenizer_vocab: int
    """Vocabulary of the BPE built for the check (the model's may be larger)."""
    corpus_chars: int
    """Characters of the embedded corpus prepared for the check (a short run reuses epochs)."""
    warmup: int
    """Untimed steps first (compilation happens in the first)."""
    steps: int
    """Timed steps."""
    profile_steps: int
    """Profiled steps after the timed ones (profiler share and peak memory)."""

    @property
    def total_steps(self) -> int:
        # One more step at the end, not measured: the sharded save, the in-training export and the
        # update-ratio monitor all act on the last step.
        return self.warmup + self.steps + self.profile_steps + 1


# The 1.3B YAML's layer shapes and microbatch (every value as yamls/pretrain/1b has it), 4 of its 24 layers.
GPU_SHAPES = Shapes(n_layers=4, d_model=SIZES['1b'].d_model, n_heads=SIZES['1b'].n_heads, seq_len=SEQ_LEN,
                    vocab_size=VOCAB, microbatch=SIZES['1b'].microbatch)
CPU_SHAPES = Shapes(n_layers=2, d_model=128, n_heads=4, seq_len=128, vocab_size=4096, microbatch=4)


def resolve_mode(args: argparse.Namespace) -> Mode:
    """The mode from the command line; every bad option is refused here, before any compute."""
    import torch
    gpus = 0 if args.cpu else torch.cuda.device_count()
    gpu = gpus > 0
    ranks = args.ranks or (gpus if gpu else 2)
    if gpu and ranks > gpus:
        raise SystemExit(f'--ranks={ranks}: only {gpus} GPUs are visible; allowed: 1..{gpus}')
    if ranks < 1:
        raise SystemExit(f'--ranks={ranks}; allowed: a positive number of processes')
    shapes = GPU_SHAPES if gpu else CPU_SHAPES
    overrides = {k: getattr(args, k) for k in ('n_layers', 'd_model', 'n_heads', 'seq_len', 'vocab_size',
                                               'microbatch', 'accum') if getattr(args, k) is not None}
    shapes = replace(shapes, **overrides)
    for key, value in asdict(shapes).items():
        if value < 1:
            raise SystemExit(f'--{key.replace("_", "-")}={value}; allowed: a positive integer')
    counts = {'warmup': args.warmup, 'steps': args.steps, 'profile_steps': args.profile_steps}
    defaults = {'warmup': 5 if gpu else 3, 'steps': 10 if gpu else 4, 'profile_steps': 2}
    counts = {k: defaults[k] if v is None else v for k, v in counts.items()}
    if counts['warmup'] < 1 or counts['steps'] < 1 or counts['profile_steps'] < 1:
        raise SystemExit(f'--warmup/--steps/--profile-steps = {counts["warmup"]}/{counts["steps"]}/'
                         f'{counts["profile_steps"]}; allowed: each at least 1 (the first step compiles)')
    tokenizer_vocab = min(4096, shapes.vocab_size)
    if tokenizer_vocab < 300:
        raise SystemExit(f'--vocab-size={shapes.vocab_size}; allowed: at least 300 (the local BPE needs 256 bytes, '
                         'its special tokens and some merges)')
    return Mode(
        device='gpu' if gpu else 'cpu', ranks=ranks,
        precision='amp_bf16' if gpu else 'fp32', init_device='meta' if gpu else 'cpu',
        compile_config={} if gpu else {'backend': 'aot_eager'}, shapes=shapes, tokenizer_vocab=tokenizer_vocab,
        corpus_chars=8_000_000 if gpu else 2_000_000, **counts)


# ------------------------------------------------------------------------------------------------
# The configs: the shipped paper YAML, shrunk by overrides
# ------------------------------------------------------------------------------------------------

def job_config(model: str, mode: Mode, data: Path, cwd: Path, extra: list[str] = ()):
    """The 1.3B Rapid config of ``model`` (``plain`` or ``wesar``) with the check's overrides."""
    from omegaconf import OmegaConf

    from wesar_foundry.commands.paper import train_config

    cfg = OmegaConf.create(train_config('1b', MODELS[model], 'rapid'))
    sh = mode.shapes
    tokens_per_step = mode.ranks * sh.microbatch * sh.accum * sh.seq_len
    T = mode.total_steps
    dotlist = [
        f'variables.data_local={data}', f'variables.tokenizer_name={data}/tokenizer', f'variables.max_seq_len={sh.seq_len}',
        f'variables.save_root={cwd}', f'variables.run_name=gpu-check-{model}',
        f'model.n_layers={sh.n_layers}', f'model.d_model={sh.d_model}', f'model.n_heads={sh.n_heads}',
        f'model.vocab_size={sh.vocab_size}',
        f'model.init_device={mode.init_device}', f'precision={mode.precision}',
        # The local tokenizer has its own pad token (the YAML's <unk> is the LLaMA tokenizer's).
        'tokenizer.kwargs.pad_token=null',
        f'global_train_batch_size={mode.ranks * sh.microbatch * sh.accum}', f'device_train_microbatch_size={sh.microbatch}',
        f'device_eval_batch_size={sh.microbatch}',
        # A short run at the paper's lr: warm-up over 2 steps (in tokens, the unit of the YAML's t_max).
        f'max_duration={T}ba', f'scheduler.t_warmup={2 * tokens_per_step}tok',
        # The sharded save, the in-training export and the update-ratio monitor act once, on the last
        # (unmeasured) step: their paths run, their costs stay out of the measured steps.
        f'save_interval={T}ba', f'callbacks.wesar_hf_checkpointer.save_interval={T}ba',
        f'callbacks.update_ratio_monitor.interval={T}',
        f'console_log_interval={T}ba', 'loggers.inmemory={}',
        # Data loading in the training process: trivial next to a step, and the same on both devices.
        'train_loader.num_workers=0', 'train_loader.prefetch_factor=null', 'train_loader.persistent_workers=false',
        'train_loader.pin_memory=false',
        'python_log_level=info',
        *extra,
    ]
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    cfg.compile_config = dict(mode.compile_config)
    # No evaluation: the check measures training; the held-out split is not read.
    del cfg['eval_loader']
    cfg.callbacks.gpu_check_probe = {'warmup': mode.warmup, 'steps': mode.steps, 'profile_steps': mode.profile_steps}
    return cfg


# ------------------------------------------------------------------------------------------------
# Under `composer -n <ranks>`: the probe callback and the jobs
# ------------------------------------------------------------------------------------------------

def gated_op_names() -> tuple[set[str], set[str], set[str]]:
    """Profiler event names of the gated matrices' ops (``reparam/functional.py``): (the ops, whose
    events hold exactly their work: the ``torch.library`` custom ops, forward and backward, the route
    under compilation, and the eager route's forward Functions; the forward ones among them; the
    eager route's backward nodes, whose math runs in the node itself)."""
    from wesar_foundry.reparam import functional as f
    forward = {f._linear._qualname, f._embedding._qualname, f._EagerLinear.__name__, f._EagerEmbedding.__name__}
    ops = forward | {f._linear_backward._qualname, f._embedding_backward._qualname}
    return ops, forward, {f._EagerLinear.__name__ + 'Backward', f._EagerEmbedding.__name__ + 'Backward'}


# Inside a gated op, the products a plain matrix computes too: the rest is the gate's own work.
MATMUL_OPS = frozenset({'aten::linear', 'aten::matmul', 'aten::mm', 'aten::addmm', 'aten::bmm'})


def gated_times(events, time_of) -> dict:
    """Time inside the gated ops, the part of it outside their matmuls, and that part by op, in µs,
    over ``events`` (``torch.profiler``'s FunctionEvents; ``self``: the ops' own time outside any
    child: dispatch, Python), with each gated event name's count.

    Activation checkpointing recomputes a layer's forward inside the first backward node of that
    layer that unpacks a saved tensor, with no event of its own. An eager backward node (its math
    has no op event) is therefore counted without its children up to the last gated forward op among
    them (the recompute; early stopping ends it there), and the recomputed gated ops are counted as
    ops. The custom ops' own autograd nodes (``GeneratedBackwardFor_*``) are not counted: the
    backward op inside them is."""
    ops, forward, eager_backward = gated_op_names()

    def outermost(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name in ops:
                return False
            p = p.cpu_parent
        return True

    def matmul_time(e) -> float:
        return sum(time_of(c) if c.name in MATMUL_OPS else matmul_time(c) for c in e.cpu_children)

    def own_children(e) -> list:
        if e.name in ops:
            return e.cpu_children
        children = sorted(e.cpu_children, key=lambda c: c.time_range.start)
        last = max((i for i, c in enumerate(children) if c.name in forward), default=-1)
        return children[last + 1:]

    inside = matmuls = 0.0
    by_op: dict[str, float] = {}
    counts: dict[str, int] = {}
    for e in events:
        if e.name not in ops and e.name not in eager_backward:
            continue
        counts[e.name] = counts.get(e.name, 0) + 1
        if e.name in ops and not outermost(e):
            continue
        children = own_children(e)
        own = time_of(e) - sum(time_of(c) for c in e.cpu_children)
        inside += own + sum(time_of(c) for c in children)
        by_op['self'] = by_op.get('self', 0.0) + own
        for c in children:
            if c.name in MATMUL_OPS:
                matmuls += time_of(c)
            else:
                m = matmul_time(c)
                matmuls += m
                by_op[c.name] = by_op.get(c.name, 0.0) + time_of(c) - m
    return {'gated': inside, 'gate_work': inside - matmuls, 'by_op': by_op, 'counts': counts}


def local_bytes(tensors) -> int:
    """Bytes this rank holds of ``tensors`` (a DTensor counts its local shard)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, 'to_local') else t
        total += t.numel() * t.element_size()
    return total


def make_probe_class():
    """The ``gpu_check_probe`` callback class (Composer is imported under the launcher only)."""
    import torch
    from composer.core import Callback, State
    from composer.loggers import Logger

    class Probe(Callback):
        """Times every step (device synchronized at BATCH_START and BATCH_END), profiles the steps
        after the timed ones, and records the model's FLOPs per device batch and the card's peak."""

        def __init__(self, warmup: int, steps: int, profile_steps: int) -> None:
            self.warmup, self.steps, self.profile_steps = warmup, steps, profile_steps
            self.times: dict[int, float] = {}
            self.flops_per_batch = self.peak_flops = None
            self.profile: dict = {}
            self._prof = None
            self._t0 = 0.0

        def _cuda(self, state: State) -> bool:
            return state.device.name == 'gpu'

        def _sync(self, state: State) -> None:
            if self._cuda(state):
                torch.cuda.synchronize()

        def batch_start(self, state: State, logger: Logger) -> None:
            step = int(state.timestamp.batch) + 1
            if step == self.warmup + 1:
                # No collector pause inside a measured step: the first run's imports and compilation
                # leave a heap whose full collections otherwise land in its timed steps. Measured on
                # CPU: without this and launch()'s glibc setting, the first of the two runs' timed
                # steps took 2.5x the second's; with both, the order no longer shows.
                gc.collect()
                gc.disable()
            self._sync(state)
            if step == self.warmup + self.steps + 1:
                self._start_profile(state)
            self._t0 = time.perf_counter()

        def batch_end(self, state: State, logger: Logger) -> None:
            step = int(state.timestamp.batch)
            self._sync(state)
            self.times[step] = time.perf_counter() - self._t0
            if self.flops_per_batch is None:
                from composer.callbacks.speed_monitor import get_gpu_flops_available
                self.flops_per_batch = float(state.model.flops_per_batch(state.batch))
                self.peak_flops = float(get_gpu_flops_available(state) or 0) or None
            if step == self.warmup + self.steps + self.profile_steps:
                self._stop_profile(state, step)
                gc.enable()

        def _start_profile(self, state: State) -> None:
            from torch.profiler import ProfilerActivity, profile
            cuda = self._cuda(state)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            # On CPU the allocations are replayed from the profile (no allocator statistics there).
            params = list(state.model.parameters())
            opt_state = [v for opt in state.optimizers for s in opt.state.values() for v in s.values()
                         if isinstance(v, torch.Tensor)]
            self._persistent = local_bytes(params + [p.grad for p in params] + list(state.model.buffers()) + opt_state)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            self._prof = profile(activities=activities, profile_memory=not cuda)
            self._prof.__enter__()

        def _stop_profile(self, state: State, last: int) -> None:
            prof, self._prof = self._prof, None
            prof.__exit__(None, None, None)
            cuda = self._cuda(state)
            # Kernel time on CUDA (the work the GPU does for the op); thread time on CPU.
            time_of = (lambda e: e.device_time_total) if cuda else (lambda e: e.cpu_time_total)  # noqa: E731
            g = gated_times(prof.events(), time_of)
            gated, gate_work = g['gated'], g['gate_work']
            steps_s = sum(self.times[s] for s in range(last - self.profile_steps + 1, last + 1))
            if cuda:
                peak = torch.cuda.max_memory_allocated() - self.baseline_bytes
            else:
                from memory import profiled_peak
                peak = self._persistent + profiled_peak(prof)
            self.profile = {'steps_s': steps_s, 'gated_s': gated / 1e6, 'gate_work_s': gate_work / 1e6,
                            'gated_share': gated / 1e6 / steps_s, 'gate_work_share': gate_work / 1e6 / steps_s,
                            'gate_work_by_op_s': {k: v / 1e6 for k, v in sorted(g['by_op'].items(), key=lambda kv: -kv[1])},
                            'gated_events': g['counts'],
                            'peak_bytes': peak, 'persistent_bytes': self._persistent,
                            'time_kind': 'kernel time (CUDA)' if cuda else 'CPU thread time'}

        baseline_bytes = 0

    return Probe


def run_jobs(spec_path: str) -> None:
    """Each job of the spec through llm-foundry's ``train()``, one after the other; per rank, a JSON
    of what the probe and the trainer show, and (rank 0) the trained model's logits on the fixed batch."""
    import torch
    import torch._dynamo
    from composer.utils import dist
    from llmfoundry.command_utils import train
    from llmfoundry.registry import callbacks
    from omegaconf import OmegaConf
    from torch._dynamo.utils import counters

    Probe = make_probe_class()
    callbacks.register('gpu_check_probe', func=Probe)
    spec = json.loads(Path(spec_path).read_text())
    if spec['device'] == 'gpu':
        # Before anything touches CUDA (the memory baseline below): this rank's own GPU, not GPU 0.
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    for job in spec['jobs']:
        cwd = Path(job['cwd'])
        os.chdir(cwd)
        torch._dynamo.reset()
        counters.clear()
        cuda = torch.cuda.is_available() and spec['device'] == 'gpu'
        # Whatever an earlier job left allocated is not this job's memory.
        Probe.baseline_bytes = torch.cuda.memory_allocated() if cuda else 0
        t0 = time.perf_counter()
        trainer = train(OmegaConf.load(job['yaml']))
        seconds = time.perf_counter() - t0
        state = trainer.state
        probe = next(cb for cb in state.callbacks if isinstance(cb, Probe))
        model = state.model
        params = list(model.parameters())
        memory = next(d for d in trainer.logger.destinations if type(d).__name__ == 'InMemoryLogger')
        losses = [float(v) for _, v in memory.data.get('loss/train/total', [])]
        result = {
            'rank': dist.get_global_rank(), 'world_size': dist.get_world_size(), 'train_s': seconds,
            'device_name': torch.cuda.get_device_name() if cuda else 'cpu',
            'fsdp': type(state.fsdp_config).__name__ if state.fsdp_config is not None else None,
            # Counted before the forward below: FSDP2 keeps the root's parameters unsharded after one.
            'sharded_params': sum(hasattr(p, 'to_local') for p in params), 'params': len(params),
            'checkpointed_layers': sum(type(m).__name__ == 'CheckpointWrapper' for m in model.modules()),
            'n_layers': model.model.config.num_hidden_layers,
            'compiled_graphs': int(counters['stats'].get('unique_graphs', 0)),
            'graph_breaks': int(sum(counters['graph_break'].values())),
            'graph_break_reasons': {k[:300]: int(v) for k, v in counters['graph_break'].items()},
            'steps_done': int(state.timestamp.batch), 'losses': losses,
            'step_times_s': {str(k): v for k, v in sorted(probe.times.items())},
            'flops_per_batch': probe.flops_per_batch, 'peak_flops': probe.peak_flops,
            'tokens_per_batch': int(state.batch['input_ids'].numel()), 'profile': probe.profile,
        }
        # The trained model's logits on a fixed batch, eval mode; a collective under FSDP: every rank.
        vocab = model.model.config.vocab_size
        ids = torch.randint(0, vocab, (2, min(64, job['seq_len'])), generator=torch.Generator().manual_seed(FIXED_BATCH_SEED))
        model.eval()
        with torch.no_grad():
            logits = model.model(input_ids=ids.to(state.device._device)).logits.float().cpu()
        trainer.close()
        out = Path(job['out'])
        out.mkdir(parents=True, exist_ok=True)
        (out / f'rank{result["rank"]}.json').write_text(json.dumps(result, indent=1))
        if result['rank'] == 0:
            torch.save({'input_ids': ids, 'logits': logits}, out / 'logits.pt')
        del trainer, state, model, params, probe, memory
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        dist.barrier()


# ------------------------------------------------------------------------------------------------
# The launcher side: data, launch, export check, report
# ------------------------------------------------------------------------------------------------

def prepare_data(mode: Mode, out: Path, seq_len: int) -> Path:
    from wesar_foundry.data import PrepareConfig, prepare
    return Path(prepare(PrepareConfig(out=str(out), vocab_size=mode.tokenizer_vocab, seq_len=seq_len,
                                      max_chars=mode.corpus_chars, val_percent=0)))


def check_data(data: Path, seq: int, global_batch: int) -> None:
    """Refuse a prepared folder whose samples are shorter than the run's sequences, or too few for one
    optimizer step (the loader drops a last partial batch, so an epoch would have no step at all)."""
    from wesar_foundry.data.mds import MANIFEST
    manifest = data / MANIFEST
    if not manifest.is_file():
        return  # prepared some other way: llm-foundry's own checks apply
    info = json.loads(manifest.read_text())
    samples, sample_len = info.get('samples', {}).get('train', 0), info.get('config', {}).get('seq_len', seq)
    if sample_len < seq:
        raise SystemExit(f'--data={data}: samples of {sample_len} tokens, shorter than --seq-len={seq}; prepare it with '
                         f'--seq-len {seq} or pass --seq-len {sample_len}')
    if samples < global_batch:
        raise SystemExit(f'--data={data}: {samples} train samples, fewer than one optimizer step takes '
                         f'({global_batch} = ranks x microbatch x accum); prepare more data or pass a smaller '
                         '--microbatch/--accum')


def launch(mode: Mode, spec: Path, work: Path, timeout: int) -> None:
    """``composer -n <ranks> bench/gpu_check.py --run-jobs <spec>`` with ``FSDP_VERSION=2``; each
    rank's output in ``work/rank<r>.stdout|stderr``."""
    composer = Path(sys.executable).with_name('composer')
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE',
                                                             'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env.update(FSDP_VERSION='2', TOKENIZERS_PARALLELISM='false')
    if mode.device == 'cpu':
        env['OMP_NUM_THREADS'] = '1'  # 2 ranks on a small CPU: threads per rank only contend
        env['CUDA_VISIBLE_DEVICES'] = ''  # --cpu on a GPU machine: llm-foundry takes the GPU when it sees one
        # glibc keeps freed memory (as bench/step_time.py does): otherwise the first run's steps pay
        # page faults for fresh mmaps the second run's do not (measured: +30% for its first steps).
        env.setdefault('MALLOC_MMAP_THRESHOLD_', str(2 ** 32))
        env.setdefault('MALLOC_TRIM_THRESHOLD_', str(2 ** 34))
    cmd = [str(composer), '-n', str(mode.ranks), '--stdout', str(work / 'rank{rank}.stdout'),
           '--stderr', str(work / 'rank{rank}.stderr'), str(Path(__file__).resolve()), '--run-jobs', str(spec)]
    with open(work / 'launch.log', 'w') as log:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tails = '\n'.join(f'--- {p.name}\n{p.read_text()[-3000:]}' for p in sorted(work.glob('rank*.std*')))
        raise RuntimeError(f'the training launch failed (exit {proc.returncode}); logs in {work}\n'
                           f'{(work / "launch.log").read_text()[-2000:]}\n{tails}')


def logits_error(export_dir: Path, ids, reference, device: str) -> dict:
    """The export loaded with plain transformers (fp32) on ``device``: its class and its logits'
    relative RMS error and largest difference against ``reference``."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(export_dir, torch_dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        got = model(input_ids=ids.to(device)).logits.float().cpu()
    diff = got - reference
    rel = float(diff.norm() / reference.norm())
    return {'class': type(model).__name__, 'rel_err': rel, 'max_abs_diff': float(diff.abs().max()),
            'ok': rel <= LOGITS_RTOL}


def export_check(model: str, job: dict, work: Path, device: str) -> dict:
    """Sharded save → ``export_checkpoint`` → transformers logits; and the in-training export's."""
    import torch
    from transformers import AutoConfig

    from wesar_foundry.export import export_checkpoint
    trained = torch.load(Path(job['out']) / 'logits.pt')
    save_folder = Path(job['save_folder'])
    t0 = time.perf_counter()
    exported = export_checkpoint(save_folder, work / f'export-{model}')
    export_s = time.perf_counter() - t0
    checks = {}
    hf_exports = sorted((save_folder / 'huggingface').glob('ba*'))
    for name, path in (('sharded_export', exported), ('in_training_export', hf_exports[-1] if hf_exports else None)):
        if path is None:
            checks[name] = {'ok': False, 'error': f'no huggingface/ba* folder in {save_folder}'}
            continue
        config = AutoConfig.from_pretrained(path)
        res = logits_error(path, trained['input_ids'], trained['logits'], device)
        res.update(path=str(path), model_type=config.model_type, architectures=config.architectures,
                   dtype=str(config.torch_dtype))
        # A stock Llama, loaded as one: nothing of ours is needed to read it.
        res['ok'] = res['ok'] and config.model_type == 'llama' and res['class'] == 'LlamaForCausalLM'
        checks[name] = res
    checks['sharded_export']['export_s'] = export_s
    return checks


def summarize(model: str, ranks: list[dict], mode: Mode) -> dict:
    """One model's numbers from every rank's JSON."""
    first = ranks[0]
    timed = [str(s) for s in range(mode.warmup + 1, mode.warmup + mode.steps + 1)]
    # A step ends when its slowest rank does.
    times = [max(r['step_times_s'][s] for r in ranks) for s in timed]
    q = statistics.quantiles(times, n=4, method='inclusive') if len(times) > 1 else [times[0]] * 3
    step = statistics.median(times)
    flops = first['flops_per_batch']
    peak_flops = first['peak_flops']
    profiles = [r['profile'] for r in ranks]
    p0 = profiles[0]
    return {
        'model': model, 'method': MODELS[model], 'device_name': first['device_name'],
        'steps_done': first['steps_done'], 'losses': first['losses'], 'train_s': first['train_s'],
        'compile_step_s': max(r['step_times_s']['1'] for r in ranks),
        'step_s': step, 'step_s_q1': q[0], 'step_s_q3': q[2], 'step_times_s': times,
        'tokens_per_s_per_device': first['tokens_per_batch'] / step,
        'flops_per_batch_per_device': flops, 'tflops_per_device': flops / step / 1e12,
        'peak_flops_per_device': peak_flops, 'mfu': flops / step / peak_flops if peak_flops else None,
        'peak_memory_bytes': max(p['peak_bytes'] for p in profiles),
        'persistent_bytes': max(p['persistent_bytes'] for p in profiles),
        'profile_time_kind': p0['time_kind'], 'profiled_steps_s': p0['steps_s'],
        'gated_share': p0['gated_share'], 'gate_work_share': p0['gate_work_share'],
        'gated_share_per_rank': [p['gated_share'] for p in profiles],
        'gate_work_s_per_step': p0['gate_work_s'] / mode.profile_steps,
        'gate_work_by_op_s_per_step': {k: v / mode.profile_steps for k, v in p0['gate_work_by_op_s'].items()},
        'gated_events': p0['gated_events'],
        # Calls of the gated ops' eager route (autograd Functions: code torch.compile did not capture)
        # among all their forward calls, recomputations included.
        'eager_forward_calls': eager_calls(p0['gated_events']),
        'fsdp': first['fsdp'], 'sharded_params': first['sharded_params'], 'params': first['params'],
        'checkpointed_layers': first['checkpointed_layers'], 'n_layers': first['n_layers'],
        'compiled_graphs': first['compiled_graphs'], 'graph_breaks': first['graph_breaks'],
        'graph_break_reasons': first['graph_break_reasons'],
    }


def eager_calls(counts: dict[str, int]) -> str:
    _, forward, _ = gated_op_names()
    from wesar_foundry.reparam import functional as f
    eager = {f._EagerLinear.__name__, f._EagerEmbedding.__name__}
    n = sum(counts.get(k, 0) for k in forward)
    return f'{sum(counts.get(k, 0) for k in eager)}/{n}'


def run_checks(runs: dict[str, dict], ratios: dict, mode: Mode) -> list[dict]:
    """Every check as {name, ok, detail}."""
    checks = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({'name': name, 'ok': bool(ok), 'detail': detail})

    for m, r in runs.items():
        check(f'{m}: trained', r['steps_done'] == mode.total_steps and len(r['losses']) == mode.total_steps
              and all(math.isfinite(x) for x in r['losses']),
              f'{r["steps_done"]}/{mode.total_steps} steps, {len(r["losses"])} finite losses expected')
        check(f'{m}: FSDP2 shards every parameter', r['fsdp'] == 'FSDP2Config' and r['sharded_params'] == r['params'] > 0,
              f'{r["fsdp"]}, {r["sharded_params"]}/{r["params"]} parameters are DTensors')
        check(f'{m}: activation checkpointing on every layer', r['checkpointed_layers'] == r['n_layers'],
              f'{r["checkpointed_layers"]}/{r["n_layers"]} decoder layers wrapped')
        check(f'{m}: torch.compile compiled', r['compiled_graphs'] >= 1,
              f'{r["compiled_graphs"]} graphs, {r["graph_breaks"]} graph breaks')
        check(f'{m}: profiler share in (0, 1)', 0 < r['gated_share'] < 1,
              f'gated ops {r["gated_share"]:.4f} of the profiled steps ({r["profile_time_kind"]})')
        ops = r['gated_events']
        backward = sum(n for name, n in ops.items() if name.lower().endswith('backward'))
        check(f'{m}: profiler saw the gated ops forward and backward', 0 < backward < sum(ops.values()),
              f'events: {ops}')
        for name, e in r['export'].items():
            detail = e.get('error') or (f'rel. RMS error {e["rel_err"]:.2e} (≤ {LOGITS_RTOL:g}), max |Δ| '
                                        f'{e["max_abs_diff"]:.3g}, {e["model_type"]} {e["dtype"]}')
            check(f'{m}: {name.replace("_", " ")} gives the trained logits', e['ok'], detail)
    for name, value in ratios.items():
        if name.endswith('_ratio'):
            check(f'wesar / plain {name[:-6].replace("_", " ")} finite and positive',
                  value is not None and math.isfinite(value) and value > 0, f'{value}')
    return checks


def fmt_bytes(b: float) -> str:
    return f'{b / MiB:,.1f}'


def format_table(runs: dict[str, dict], ratios: dict) -> str:
    p, w = runs['plain'], runs['wesar']

    def pct(x):
        return 'n/a' if x is None else f'{100 * x:.1f}%'

    rows = [
        ('step time, median (ms)', f'{1e3 * p["step_s"]:.1f}', f'{1e3 * w["step_s"]:.1f}', f'{ratios["step_time_ratio"]:.4f}'),
        ('step time, IQR (ms)', f'{1e3 * p["step_s_q1"]:.1f}–{1e3 * p["step_s_q3"]:.1f}',
         f'{1e3 * w["step_s_q1"]:.1f}–{1e3 * w["step_s_q3"]:.1f}', ''),
        ('peak memory per device (MiB)', fmt_bytes(p['peak_memory_bytes']), fmt_bytes(w['peak_memory_bytes']),
         f'{ratios["peak_memory_ratio"]:.4f}'),
        ('tokens/s per device', f'{p["tokens_per_s_per_device"]:,.0f}', f'{w["tokens_per_s_per_device"]:,.0f}', ''),
        ('model TFLOP/s per device', f'{p["tflops_per_device"]:.3g}', f'{w["tflops_per_device"]:.3g}', ''),
        ('MFU', pct(p['mfu']), pct(w['mfu']), ''),
        ("gated ops' share of the step (profiler)", f'{p["gated_share"]:.4f}', f'{w["gated_share"]:.4f}', ''),
        ('  of which outside their matmuls', f'{p["gate_work_share"]:.4f}', f'{w["gate_work_share"]:.4f}',
         f'{ratios["profiled_step_ratio"]:.4f} (estimate)'),
        ('export → transformers, rel. error', f'{p["export"]["sharded_export"].get("rel_err", float("nan")):.1e}',
         f'{w["export"]["sharded_export"].get("rel_err", float("nan")):.1e}', ''),
        ('in-training export, rel. error', f'{p["export"]["in_training_export"].get("rel_err", float("nan")):.1e}',
         f'{w["export"]["in_training_export"].get("rel_err", float("nan")):.1e}', ''),
        ('loss, first → last step', f'{p["losses"][0]:.3f} → {p["losses"][-1]:.3f}',
         f'{w["losses"][0]:.3f} → {w["losses"][-1]:.3f}', ''),
        ('compile step (s)', f'{p["compile_step_s"]:.1f}', f'{w["compile_step_s"]:.1f}', ''),
        ('gated forward calls run eagerly (not compiled)', p['eager_forward_calls'], w['eager_forward_calls'], ''),
        ('compiled graphs / graph breaks', f'{p["compiled_graphs"]} / {p["graph_breaks"]}',
         f'{w["compiled_graphs"]} / {w["graph_breaks"]}', ''),
    ]
    lines = ['| | plain (Small init) | WeSaR | WeSaR / plain |', '|---|---|---|---|']
    lines += [f'| {a} | {b} | {c} | {d} |' for a, b, c, d in rows]
    return '\n'.join(lines)


def write_json(path: Path, obj: dict) -> None:
    """Write-then-rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    tmp.write_text(json.dumps(obj, indent=2, default=str) + '\n')
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', help='write the results as JSON here')
    parser.add_argument('--work', help='working folder, kept afterwards (default: a temporary one, removed); '
                                       'must not exist or be empty')
    parser.add_argument('--data', help='a folder `wesar-foundry prepare` made (tokenizer/ and train/ with samples of at '
                                       'least --seq-len tokens); default: built from the embedded corpus')
    parser.add_argument('--cpu', action='store_true', help='CPU mode even if CUDA is visible')
    parser.add_argument('--ranks', type=int, help='processes (default: every visible GPU; 2 on CPU)')
    for flag, key, what in (('--layers', 'n_layers', 'decoder layers'), ('--d-model', 'd_model', 'hidden size'),
                            ('--heads', 'n_heads', 'attention heads'), ('--seq-len', 'seq_len', 'sequence length'),
                            ('--vocab-size', 'vocab_size', 'model vocabulary'),
                            ('--microbatch', 'microbatch', 'sequences per device per microbatch')):
        parser.add_argument(flag, dest=key, type=int, help=f'{what} (default: {getattr(GPU_SHAPES, key)} on GPU, '
                                                           f'{getattr(CPU_SHAPES, key)} on CPU)')
    parser.add_argument('--accum', type=int, help='microbatches per optimizer step (default: 2)')
    parser.add_argument('--warmup', type=int, help='untimed steps first, compilation included (default: 5 GPU, 3 CPU)')
    parser.add_argument('--steps', type=int, help='timed steps (default: 10 GPU, 4 CPU)')
    parser.add_argument('--profile-steps', type=int, help='profiled steps after the timed ones (default: 2)')
    parser.add_argument('--peak-tflops', type=float, help="the device's bf16 dense peak, for MFU, when Composer's "
                                                          'table does not know the card')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='an extra dotlist override for both runs (repeatable), e.g. '
                             'fsdp_config.activation_checkpointing=false')
    parser.add_argument('--timeout', type=int, default=1800, help='seconds allowed for the training launch')
    parser.add_argument('--run-jobs', help=argparse.SUPPRESS)  # under the launcher: run a spec's jobs
    args = parser.parse_args(argv)
    if args.run_jobs:
        run_jobs(args.run_jobs)
        return 0

    started = time.perf_counter()
    mode = resolve_mode(args)
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise SystemExit(f'--peak-tflops={args.peak_tflops}; allowed: a positive number')
    if args.data and not (Path(args.data) / 'tokenizer').is_dir():
        raise SystemExit(f'--data={args.data}: no tokenizer/ folder in it; give a folder `wesar-foundry prepare` made')
    if args.work and Path(args.work).exists() and any(Path(args.work).iterdir()):
        raise SystemExit(f'--work={args.work} is not empty; give a new folder (a rerun in an old one would resume '
                         'from its checkpoints)')
    out = Path(args.out).resolve() if args.out else None
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix='gpu-check-'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _check(mode, args, work, out, started)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def _check(mode: Mode, args: argparse.Namespace, work: Path, out: Path | None, started: float) -> int:
    from omegaconf import OmegaConf

    from common import describe_machine

    import torch
    if mode.device == 'cpu':
        torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1): the export check shares the small CPU too
    seq = mode.shapes.seq_len
    t0 = time.perf_counter()
    data = Path(args.data).resolve() if args.data else prepare_data(mode, work / 'data', seq)
    data_s = time.perf_counter() - t0
    check_data(data, seq, mode.ranks * mode.shapes.microbatch * mode.shapes.accum)
    jobs = {}
    for model in MODELS:
        cwd = work / model
        cwd.mkdir(parents=True)
        cfg = job_config(model, mode, data, cwd, args.set)
        OmegaConf.save(cfg, cwd / 'config.yaml')
        jobs[model] = {'model': model, 'yaml': str(cwd / 'config.yaml'), 'cwd': str(cwd), 'out': str(cwd / 'result'),
                       'seq_len': seq, 'save_folder': str(cwd / f'gpu-check-{model}')}
    spec = work / 'jobs.json'
    spec.write_text(json.dumps({'device': mode.device, 'jobs': list(jobs.values())}, indent=1))
    print(f'[gpu_check] {mode.device} mode, {mode.ranks} ranks; training plain and WeSaR ({work})', file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    launch(mode, spec, work, args.timeout)
    train_s = time.perf_counter() - t0

    device = 'cuda:0' if mode.device == 'gpu' else 'cpu'
    runs = {}
    t0 = time.perf_counter()
    for model, job in jobs.items():
        ranks = [json.loads(p.read_text()) for p in sorted(Path(job['out']).glob('rank*.json'))]
        if len(ranks) != mode.ranks:
            raise RuntimeError(f'{model}: {len(ranks)} of {mode.ranks} ranks reported; logs in {work}')
        runs[model] = summarize(model, ranks, mode)
        if args.peak_tflops:
            r = runs[model]
            r['peak_flops_per_device'] = args.peak_tflops * 1e12
            r['mfu'] = r['tflops_per_device'] / args.peak_tflops
        print(f'[gpu_check] exporting {model}', file=sys.stderr, flush=True)
        runs[model]['export'] = export_check(model, job, work, device)
    export_s = time.perf_counter() - t0

    p, w = runs['plain'], runs['wesar']
    ratios = {
        'step_time_ratio': w['step_s'] / p['step_s'],
        'peak_memory_ratio': w['peak_memory_bytes'] / p['peak_memory_bytes'],
        # What the gates add per step (their work outside the matmuls, less the plain model's own
        # gated op, the embedding's constant scale) over the plain model's profiled step.
        'profiled_step_ratio': 1 + (w['gate_work_s_per_step'] - p['gate_work_s_per_step'])
                               / (p['profiled_steps_s'] / mode.profile_steps),
    }
    checks = run_checks(runs, ratios, mode)
    report = {
        'machine': (describe_machine(device) if mode.device == 'cpu'
                    else f'{mode.ranks}x {p["device_name"]}, torch {torch.__version__}'),
        'mode': asdict(mode), 'logits_rtol': LOGITS_RTOL, 'ratios': ratios, 'runs': runs, 'checks': checks,
        'ok': all(c['ok'] for c in checks),
        'seconds': {'data': data_s, 'train_launch': train_s, 'export_and_check': export_s,
                    'total': time.perf_counter() - started},
    }
    sh = mode.shapes
    print(f'\ngpu_check: {report["machine"]}; {mode.ranks} ranks, FSDP2, {mode.precision} + bf16 FSDP params, '
          f'activation checkpointing, torch.compile {mode.compile_config or "{}"}; '
          f'd={sh.d_model} N={sh.n_layers} heads={sh.n_heads} seq={seq} vocab={sh.vocab_size}, '
          f'microbatch {sh.microbatch} x {sh.accum}; {mode.warmup} warm-up, {mode.steps} timed, '
          f'{mode.profile_steps} profiled steps\n')
    print(format_table(runs, ratios))
    failed = [c for c in checks if not c['ok']]
    print(f'\nchecks: {len(checks) - len(failed)}/{len(checks)} passed; {report["seconds"]["total"]:.0f} s in all')
    for c in failed:
        print(f'  FAILED {c["name"]}: {c["detail"]}')
    if out:
        write_json(out, report)
        print(f'wrote {out}')
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
