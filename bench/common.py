"""Shared by the benchmark scripts: presets, the variants (one model per reparameterization, plus a
stock transformers Llama), one training step, and interleaved side-by-side measurement.

Not part of the package or the test suite. Run the scripts from the repository root:
``python bench/step_time.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from wesar_foundry.foundry.composer_models import WeSaRLlamaComposerModel, lm_losses


@dataclass(frozen=True)
class Preset:
    """A model and batch shape to measure at."""

    d_model: int
    """Hidden size d."""
    n_layers: int
    """Decoder layers N."""
    n_heads: int
    """Attention heads."""
    seq_len: int
    """Tokens per sequence."""
    batch_size: int
    """Sequences per step."""
    vocab_size: int
    """Embedding / LM-head rows."""
    bf16: bool
    """bf16 autocast with fp32 master weights (the paper's precision); fp32 when False."""
    accum: int = 1
    """Microbatches (forward + backward) per optimizer step, as with device_train_microbatch_size."""
    paper_layers: int | None = None
    """Layers of the full model these shapes come from (for the record only)."""


PRESETS = {
    # The tiny YAML's model (yamls/tiny/wesar.yaml) at batch 16: what a CPU user trains.
    'tiny': Preset(d_model=128, n_layers=4, n_heads=4, seq_len=128, batch_size=16, vocab_size=4096, bf16=False),
    # A CPU shape where the matmuls dominate the step as they do on a GPU: d=512 makes every
    # per-element cost (gates, norms, the optimizer) small beside the d² products, and seq 512
    # gives attention its realistic share; batch 2 keeps one fp32 step near a second on one thread.
    'matmul': Preset(d_model=512, n_layers=4, n_heads=8, seq_len=512, batch_size=2, vocab_size=4096, bf16=False),
    # The paper's 1.3B layer shapes (d=2048, 16 heads, seq 2048, vocab 32000) with few layers, so that
    # every variant fits one GPU at once and the whole run fits one short call.
    # Microbatch 8 and 8 microbatches per step: yamls/pretrain/1b on 8 GPUs (512 sequences, microbatch 8).
    '1.3b-layers': Preset(d_model=2048, n_layers=4, n_heads=16, seq_len=2048, batch_size=8, vocab_size=32000,
                          bf16=True, accum=8, paper_layers=24),
}

# Every reparameterization the model offers, at the init the paper pairs it with (init does not
# change the cost; it keeps each variant a valid configuration). 'plain' is the paper's timing
# baseline (Small init, no reparameterization).
REPARAM_VARIANTS: dict[str, dict] = {
    'plain': {'reparam': 'none', 'init_config': {'name': 'small'}},
    'wesar': {'reparam': 'wesar', 'init_config': {'name': 'wesar_', 'target': 'he', 'sigma2': 4e-5}},
    'weight_norm': {'reparam': 'weight_norm', 'init_config': {'name': 'wesar_', 'target': 'he', 'sigma2': 16e-5}},
    'sigma_reparam': {'reparam': 'sigma_reparam', 'init_config': {'name': 'wesar_', 'target': 'he', 'sigma2': 16e-5}},
    'residual_scaling': {'reparam': 'residual_scaling', 'init_config': {'name': 'small'}},
}
# A stock transformers LlamaForCausalLM (what llm-foundry's hf_causal_lm builds) of the same shape.
HF_LLAMA = 'hf_llama'
ALL_VARIANTS = tuple(REPARAM_VARIANTS) + (HF_LLAMA,)
OPTIMIZERS = ('decoupled_adamw', 'torch_adamw')
# The paper's wall-time overheads vs Small init at 1.3B (Table 2) and this project's goals.
PAPER_OVERHEAD = {'weight_norm': 0.126, 'sigma_reparam': 0.0639, 'residual_scaling': 0.0158, 'wesar': 0.0195}
GOAL_RATIO = {'wesar': 1.005, 'weight_norm': 1 + PAPER_OVERHEAD['weight_norm'] / 2,
              'sigma_reparam': 1 + PAPER_OVERHEAD['sigma_reparam'] / 2}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default: cpu)')
    parser.add_argument('--preset', default=None, choices=sorted(PRESETS),
                        help='shapes (default: tiny on cpu, 1.3b-layers on cuda)')
    parser.add_argument('--variants', default=','.join(ALL_VARIANTS),
                        help=f'comma-separated, from: {", ".join(ALL_VARIANTS)} (plain is always included)')
    parser.add_argument('--layers', type=int, help="override the preset's n_layers")
    parser.add_argument('--seq-len', type=int, help="override the preset's seq_len")
    parser.add_argument('--batch-size', type=int, help="override the preset's batch_size (per microbatch)")
    parser.add_argument('--accum', type=int, help="override the preset's microbatches per optimizer step")
    parser.add_argument('--optimizer', default='decoupled_adamw', choices=OPTIMIZERS,
                        help="decoupled_adamw: Composer's, what the YAMLs use (a per-parameter loop); "
                             'torch_adamw: torch.optim.AdamW, foreach')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: 1 on cpu: on a shared 2-core machine, 2 OpenMP threads '
                             'wait on each other and made steps 7x slower and erratic)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--compile', action='store_true',
                        help="torch.compile every variant's model (what compile_config: {} does in a YAML); "
                             'each compiles during the untimed warm-up steps')


def resolve(args: argparse.Namespace) -> tuple[Preset, list[str]]:
    """The preset with overrides applied, and the variant list (plain first)."""
    if args.device not in ('cpu',) and not args.device.startswith('cuda'):
        raise SystemExit(f'--device={args.device!r}; allowed: cpu, cuda, cuda:<n>')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is visible')
    threads = args.threads or (1 if args.device == 'cpu' else None)
    if threads:
        torch.set_num_threads(threads)
    preset = PRESETS[args.preset or ('tiny' if args.device == 'cpu' else '1.3b-layers')]
    overrides = {k: v for k, v in (('n_layers', args.layers), ('seq_len', args.seq_len),
                                   ('batch_size', args.batch_size), ('accum', args.accum)) if v is not None}
    preset = replace(preset, **overrides)
    variants = [v.strip() for v in args.variants.split(',') if v.strip()]
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise SystemExit(f'--variants: unknown {", ".join(unknown)}; allowed: {", ".join(ALL_VARIANTS)}')
    return preset, ['plain'] + [v for v in variants if v != 'plain']


def build_model(variant: str, preset: Preset, device: str) -> torch.nn.Module:
    """An fp32 model (the master weights) of ``variant`` on ``device``."""
    if variant == HF_LLAMA:
        from transformers import LlamaConfig, LlamaForCausalLM
        # Llama's MLP is gated (3 matrices): 8d/3 hidden units (rounded to 128) match the paper's
        # 2-matrix GeLU MLP (4d) in parameters and FLOPs, so the MFU comparison is like for like.
        hidden = -(-8 * preset.d_model // 3 // 128) * 128
        config = LlamaConfig(
            vocab_size=preset.vocab_size, hidden_size=preset.d_model, intermediate_size=hidden,
            num_hidden_layers=preset.n_layers, num_attention_heads=preset.n_heads,
            num_key_value_heads=preset.n_heads, max_position_embeddings=preset.seq_len, tie_word_embeddings=False,
            attention_bias=False, mlp_bias=False)
        config._attn_implementation = 'sdpa'
        return LlamaForCausalLM(config).to(device)
    composer = WeSaRLlamaComposerModel(
        tokenizer=None, init_device='cpu', d_model=preset.d_model, n_layers=preset.n_layers,
        n_heads=preset.n_heads, vocab_size=preset.vocab_size, max_seq_len=preset.seq_len, mlp_type='gelu',
        attn_implementation='sdpa', **REPARAM_VARIANTS[variant])
    return composer.model.to(device)  # the WeSaRLlamaForCausalLM inside Composer's wrapper


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == 'decoupled_adamw':
        from composer.optim import DecoupledAdamW
        return DecoupledAdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-5)
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01, foreach=True)


def make_batch(preset: Preset, device: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, preset.vocab_size, (preset.batch_size, preset.seq_len), generator=g).to(device)
    return {'input_ids': ids, 'labels': ids.clone()}


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, preset: Preset,
              device: str, compile_: bool = False) -> Callable[[], float]:
    """One training step as Composer runs it: per microbatch forward, CE + z-loss and backward
    (``preset.accum`` times, gradients accumulating), then the optimizer step and zero grads.
    With ``compile_`` the forward (and so its backward) is ``torch.compile``d, as Composer does."""
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    model.train()
    if compile_:
        # Every variant is the same class: without room for one graph per model instance, dynamo
        # would fall back to eager after its default cache limit of 8.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        model = torch.compile(model)

    def step() -> float:
        for _ in range(preset.accum):
            autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if preset.bf16 else contextlib.nullcontext())
            with autocast:
                logits = model(input_ids=batch['input_ids'], use_cache=False).logits
                loss = lm_losses(logits, batch['labels'], z_loss=1e-4)['total'] / preset.accum
            loss.backward()
            del logits
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def warm_up(steps: dict[str, Callable[[], float]], n: int) -> dict[str, str]:
    """Run ``n`` steps of each variant; drop (and return with its error) any variant that fails, so
    that one broken variant does not cost the others' numbers on a short GPU lease."""
    failures = {}
    for name in list(steps):
        try:
            for _ in range(n):
                steps[name]()
        except Exception as e:  # noqa: BLE001 - reported in the table's footer
            if name == 'plain':
                raise
            failures[name] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
            del steps[name]
    return failures


def print_failures(failures: dict[str, str]) -> None:
    for name, error in failures.items():
        print(f'| {name} | FAILED: {error} |')


def synchronize(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize(device)


def interleaved(names: list[str], rounds: int, measure: Callable[[str], float]) -> dict[str, list[float]]:
    """``measure(name)`` for every name, ``rounds`` times, rotating the order each round so every
    variant takes every slot equally often (drift and cache effects spread evenly)."""
    out: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    gc.disable()  # no collector pauses inside a measured step
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                out[name].append(measure(name))
    finally:
        gc.enable()
    return out


def paired_ratios(values: dict[str, list[float]], base: str = 'plain') -> dict[str, list[float]]:
    """Per-round ratio to the baseline's value in the same round: robust to slow drift of the machine."""
    return {n: [a / b for a, b in zip(v, values[base])] for n, v in values.items()}


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method='inclusive') if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: torch.nn.Module, preset: Preset) -> float:
    """Training FLOPs per token: 6 × the matmul parameters (all but the embedding) + attention."""
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if 'embed_tokens' not in n and p.dim() == 2)
    attention = 12 * preset.n_layers * preset.d_model * preset.seq_len  # fwd+bwd of QKᵀ and AV
    return 6 * matmul_params + attention


def describe_machine(device: str) -> str:
    import os
    import platform
    if device.startswith('cuda'):
        return f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}'
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    return f'{cpu}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads, torch {torch.__version__}'


def now() -> float:
    return time.perf_counter()
