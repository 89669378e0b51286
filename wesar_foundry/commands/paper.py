"""The paper's runs as llm-foundry train configs (Nishida et al. 2024, sections 3–5), and the files we ship.

``yamls/pretrain/`` and ``yamls/mcloud/`` are written by this module (``python -m
wesar_foundry.commands.paper``) and a test checks the committed files still equal its output, so the
YAMLs and this table cannot drift apart.

Every run saves to ``<save_root>/<run_name>``: Composer checkpoints (``autoresume`` finds them
there) and the merged Llama exports under ``huggingface/ba<N>``. A sweep's
``variables.run_name=`` override therefore gives each job its own folder; a shared folder would
make ``autoresume`` load another seed's or σ²'s checkpoint. The platform job files leave
``save_root`` to the user (an object store, so that checkpoints outlive the container).

Every multi-GPU route sets ``FSDP_VERSION=2`` (Composer's FSDP2): the job files in their
``env_variables``, the headers' commands on the command line. Without it Composer wraps with FSDP1,
which the WeSaR models refuse (``wesar_foundry.foundry.fsdp_check``).

The cosine schedule's ``t_max`` is the run's full token budget, not Composer's default ``1dur``:
a shorter ``max_duration=`` (Figure 1 trains the 13B runs for their first 5B tokens) truncates
the run and keeps its schedule. Composer requires ``t_warmup`` and ``t_max`` in one unit, so the
warmup is given in tokens too (steps × tokens per step, the same point in training).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wesar_foundry.files.atomic import write_text

SEQ_LEN = 2048
VOCAB = 32000
TOKENS_30B = 30_000_000_000
TOKENS_10B = 10_000_000_000
SIGMA2_GRID = (1e-5, 4e-5, 16e-5, 64e-5, 256e-5)
SEEDS = (17, 18, 19, 20, 21)
IMAGE = 'mosaicml/llm-foundry:2.7.0_cu128-latest'
PLUGIN_REPO = 'wesar-foundry/wesar-foundry'  # change to your fork before submitting
# OmegaConf's mandatory-value marker: resolving the config refuses to start until it is set.
SAVE_ROOT_UNSET = '???'
# Merged-Llama exports: every 5B tokens (and, as for every hf_checkpointer, at the end of
# training). Tokens, not steps, so Rapid and Stable export at the same points; 5B is Figure 1's
# horizon; a 13B export gathers 52 GB of fp32 masters on rank 0, so not much more often.
HF_EXPORT_INTERVAL = '5000000000tok'
# Gates and gains out of weight decay: WeSaR's alpha, Weight Normalization's g, σReparam's gamma, and the
# multipliers' alpha, row_mult and col_mult (a decayed multiplier would not free the matrix's scale).
GATE_PARAM_GROUPS = [{'param_str_match': r'\.(alpha|g|gamma|row_mult|col_mult)$', 'weight_decay': 0.0}]
# Composer 0.32 turns llm-foundry's fsdp_config dict into FSDP1 unless this is in the environment.
FSDP2_ENV = {'FSDP_VERSION': '2'}
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class Size:
    """A model size of the paper."""

    d_model: int
    """Hidden size."""
    n_layers: int
    """Decoder layers."""
    n_heads: int
    """Attention heads."""
    gpus: int
    """GPUs the shipped FSDP settings are sized for."""
    microbatch: int
    """Sequences per GPU per micro-step (fits an 80 GB H100)."""
    activation_checkpointing: bool
    """Recompute decoder layers in backward to fit the micro-batch."""
    note: str
    """Where the numbers come from."""


@dataclass(frozen=True)
class Setting:
    """The paper's Rapid / Stable training settings (§4)."""

    batch_tokens: int
    """Tokens per optimizer step."""
    lr: float
    """Peak learning rate."""
    warmup: int
    """Linear warmup steps."""


SIZES = {
    '130m': Size(768, 12, 12, 8, 16, False, 'our reconstruction: the paper gives ~134M params, not the shape'),
    '1b': Size(2048, 24, 16, 8, 8, True, 'paper §4: 1,339,131,904 params untied, no gates'),
    '13b': Size(5120, 40, 40, 64, 4, True, 'paper §4'),
}
SETTINGS = {'rapid': Setting(2 ** 20, 1e-3, 100), 'stable': Setting(4 * 2 ** 20, 5e-4, 2000)}
# Model keys per method. WN and σReparam store W ~ N(0, σ) at their best σ² (16e-5); WeSaR at 4e-5.
METHODS: dict[str, dict[str, Any]] = {
    'small': {'reparam': 'none', 'init_config': {'name': 'small'}},
    'he': {'reparam': 'none', 'init_config': {'name': 'he'}},
    'weight_norm': {'reparam': 'weight_norm', 'init_config': {'name': 'wesar_', 'target': 'he', 'sigma2': 16e-5}},
    'sigma_reparam': {'reparam': 'sigma_reparam', 'init_config': {'name': 'wesar_', 'target': 'he', 'sigma2': 16e-5}},
    # Residual Scaling on the Small-init baseline: W_o, W_d drop their 1/√(2N), a constant applies it.
    'residual_scaling': {'reparam': 'residual_scaling', 'init_config': {'name': 'small'}},
    'wesar': {'reparam': 'wesar', 'init_config': {'name': 'wesar_', 'target': 'he', 'sigma2': 4e-5}},
}
GRID_METHODS = ('weight_norm', 'sigma_reparam', 'wesar')
# The paper's 1.3B reparameterization comparison (§5, 10B tokens, 5 seeds).
COMPARE_METHODS = ('small', 'weight_norm', 'sigma_reparam', 'residual_scaling', 'wesar')


def train_config(size: str, method: str, setting: str, tokens: int = TOKENS_30B) -> dict[str, Any]:
    """A complete llm-foundry train config; only data paths, the tokenizer and where to save are
    variables."""
    sz, st = SIZES[size], SETTINGS[setting]
    global_batch = st.batch_tokens // SEQ_LEN
    run = f'wesar-{size}-{method}-{setting}'
    return {
        'variables': {
            'data_local': './data/refinedweb',
            'eval_data_local': './data/wikitext',
            # An object store (s3://, gs://, oci://, ...) to stream from; the local folder is then its cache.
            'data_remote': None,
            'eval_data_remote': None,
            'tokenizer_name': 'hf-internal-testing/llama-tokenizer',
            'save_root': './checkpoints',
            'save_folder': '${variables.save_root}/${variables.run_name}',
            'run_name': run,
            'max_seq_len': SEQ_LEN,
        },
        'run_name': '${variables.run_name}',
        'seed': SEEDS[0],
        'max_seq_len': '${variables.max_seq_len}',
        'model': {
            'name': 'wesar_llama',
            'init_device': 'meta',
            'd_model': sz.d_model, 'n_layers': sz.n_layers, 'n_heads': sz.n_heads,
            'vocab_size': VOCAB, 'max_seq_len': '${variables.max_seq_len}',
            'mlp_type': 'gelu', 'expansion_ratio': 4, 'rms_norm_eps': 1e-5, 'rope_theta': 10000.0,
            'z_loss': 1e-4, 'attn_implementation': 'sdpa',
            **copy.deepcopy(METHODS[method]),
        },
        # pad must differ from eos: llm-foundry's collator masks every label equal to pad.
        'tokenizer': {'name': '${variables.tokenizer_name}',
                      'kwargs': {'model_max_length': '${variables.max_seq_len}', 'pad_token': '<unk>'}},
        'train_loader': _loader('${variables.data_local}', '${variables.data_remote}', 'train', shuffle=True),
        'eval_loader': _loader('${variables.eval_data_local}', '${variables.eval_data_remote}', 'val', shuffle=False),
        'scheduler': {'name': 'cosine_with_warmup', 't_warmup': f'{st.warmup * st.batch_tokens}tok',
                      't_max': f'{tokens}tok', 'alpha_f': 0.1},
        'optimizer': {
            'name': 'decoupled_adamw', 'lr': st.lr, 'betas': [0.9, 0.95], 'eps': 1e-8,
            # Composer's decoupled wd is not multiplied by lr: 0.01 (torch AdamW) × lr.
            'weight_decay': round(0.01 * st.lr, 12),
            'param_groups': copy.deepcopy(GATE_PARAM_GROUPS),
        },
        'algorithms': {'gradient_clipping': {'clipping_type': 'norm', 'clipping_threshold': 1.0}},
        'max_duration': f'{tokens}tok',
        'eval_interval': '1000ba',
        'eval_first': False,
        'eval_subset_num_batches': 100,
        'global_train_batch_size': global_batch,
        'device_train_microbatch_size': sz.microbatch,
        'device_eval_batch_size': sz.microbatch,
        'precision': 'amp_bf16',
        'fsdp_config': {
            'sharding_strategy': 'FULL_SHARD',
            # Dict form, not PURE/DEFAULT: those also cast buffers (RoPE's inv_freq) to bf16.
            'mixed_precision': {'param_dtype': 'bf16', 'reduce_dtype': 'fp32', 'buffer_dtype': 'fp32'},
            'activation_checkpointing': sz.activation_checkpointing,
            'activation_cpu_offload': False,
            'limit_all_gathers': True,
            'state_dict_type': 'sharded',
        },
        'progress_bar': False,
        'log_to_console': True,
        'console_log_interval': '10ba',
        'callbacks': {
            # A prepared folder without the split a loader reads: an error naming it, before any compute.
            'wesar_data_check': {},
            'speed_monitor': {'window_size': 10},
            'lr_monitor': {},
            'memory_monitor': {},
            'runtime_estimator': {},
            # Why a run spikes: exact per-matrix update ratios, and the matrices that moved at a spike.
            'update_ratio_monitor': {'interval': 10},
            'loss_spike_monitor': {},
            # Gates that change sign or shrink, matrices whose effective update ratio explodes.
            'gate_health_monitor': {},
            # Precision left at its default, the training dtype (bf16 under amp_bf16).
            'wesar_hf_checkpointer': {'save_folder': '${variables.save_folder}', 'save_interval': HF_EXPORT_INTERVAL},
        },
        # In the save folder: kept with the checkpoints (on the object store too), read by `wesar-foundry plot`.
        'loggers': {'jsonl': {'path': '${variables.save_folder}/metrics.jsonl'}},
        'save_folder': '${variables.save_folder}',
        'save_interval': '2000ba',
        'save_num_checkpoints_to_keep': 2,
        'autoresume': True,
    }


def _loader(local: str, remote: str, split: str, shuffle: bool) -> dict[str, Any]:
    return {
        'name': 'text',
        'dataset': {'local': local, 'remote': remote, 'split': split, 'shuffle': shuffle,
                    'max_seq_len': '${variables.max_seq_len}', 'shuffle_seed': '${seed}'},
        'drop_last': split == 'train',
        'num_workers': 8,
    }


def _header(size: str, method: str, setting: str, tokens: int) -> str:
    sz, st = SIZES[size], SETTINGS[setting]
    m = METHODS[method]
    return '\n'.join([
        f'# WeSaR paper run: {size} ({sz.note}), method {method}, {setting} setting, {tokens / 1e9:g}B tokens.',
        f'# reparam: {m["reparam"]}, init: {m["init_config"]}. Batch {st.batch_tokens:,} tokens at seq {SEQ_LEN},',
        f'# lr {st.lr:g}, warmup {st.warmup} steps, cosine to 10%, betas (0.9, 0.95), eps 1e-8, clip 1.0, z-loss 1e-4, bf16.',
        f'# Schedule in tokens (Composer wants t_warmup and t_max in one unit): warmup {st.warmup} steps x {st.batch_tokens:,},',
        f'# t_max the full {tokens / 1e9:g}B, so a shorter max_duration= truncates the run and keeps the schedule.',
        '# Weight decay: Composer decoupled_adamw semantics (p <- p*(1 - wd*lr_t/lr_0), NOT multiplied by lr);',
        f'# {round(0.01 * st.lr, 12):g} here equals the paper\'s 0.01 in torch AdamW semantics (p <- p*(1 - lr*wd)).',
        '# The param_groups line keeps gates and gains (alpha, g, gamma, row_mult, col_mult) out of weight decay.',
        f'# FSDP sized for {sz.gpus}x H100 80GB. Run (FSDP2; without FSDP_VERSION=2 the model refuses Composer\'s FSDP1):',
        *(f'#   {line}' for line in train_command(size, '<this yaml>')),
        '#   (data from an object store: variables.data_remote=s3://... variables.eval_data_remote=...,',
        '#   the local folders then cache it)',
        '# Saves (checkpoints, autoresume, merged Llama exports every 5B tokens) go to <save_root>/<run_name>;',
        '# set variables.save_root=s3://<bucket>/<prefix> (or gs://, oci://) for an object store.',
        '',
    ])


def train_command(size: str, yaml_path: str) -> list[str]:
    """The multi-GPU launch of a shipped YAML from a pip install (llm-foundry's CLI), as lines."""
    gpus = SIZES[size].gpus
    nodes = max(1, gpus // GPUS_PER_NODE)
    launch = f'composer -n {min(gpus, GPUS_PER_NODE)}'
    if nodes > 1:
        launch += f' --world_size {gpus} --node_rank <0..{nodes - 1}> --master_addr <node 0> --master_port 29500'
    return [f'FSDP_VERSION=2 {launch} -m llmfoundry.cli.cli train {yaml_path} \\',
            '  variables.data_local=<train MDS> variables.eval_data_local=<wikitext MDS> variables.tokenizer_name=<tok>']


def shipped_train_yamls() -> dict[str, tuple[str, dict[str, Any]]]:
    """relative path → (header, config) for every paper run we ship."""
    out = {}
    for size in SIZES:
        for method in METHODS:
            for setting in SETTINGS:
                out[f'pretrain/{size}/{method}-{setting}.yaml'] = (
                    _header(size, method, setting, TOKENS_30B), train_config(size, method, setting))
    for method in COMPARE_METHODS:
        cfg = train_config('1b', method, 'rapid', TOKENS_10B)
        cfg['variables']['run_name'] = f'wesar-1b-compare10b-{method}'
        header = _header('1b', method, 'rapid', TOKENS_10B)
        grid = ','.join(_short_float(x) for x in SIGMA2_GRID)
        if method in GRID_METHODS:
            header += f'# sigma^2 grid: model.init_config.sigma2={{{grid}}}; seeds: seed={{17..21}};\n'
        else:
            header += '# seeds: seed={17..21};\n'
        example = ' '.join(sweep_overrides(method, 16e-5 if method in GRID_METHODS else None, 19))
        header += f'# each run with its own run name (and so save folder), e.g. {example}\n'
        out[f'pretrain/1b/compare-10b/{method}.yaml'] = (header, cfg)
    return out


def mcloud_job(rel_yaml: str, cfg: dict[str, Any], overrides: list[str], name: str,
               save_root: str = SAVE_ROOT_UNSET) -> dict[str, Any]:
    """A MosaicML platform run config: image, llm-foundry + the plugin from git, the command.

    ``save_root`` is where every run of the job saves (``<save_root>/<run_name>``). A container's
    disk is gone when it stops, so give an object store; unset, the job refuses to start.
    """
    size = rel_yaml.split('/')[1]
    gpus = SIZES[size].gpus
    args = ' '.join(overrides)
    if not save_root.rstrip('/'):
        raise ValueError(f'save_root: {save_root!r}; give an object store URI such as s3://<bucket>/<prefix>')
    cfg = copy.deepcopy(cfg)
    cfg['variables']['save_root'] = save_root.rstrip('/')
    return {
        'name': name,
        'image': IMAGE,
        'compute': {'gpus': gpus},
        'env_variables': dict(FSDP2_ENV),
        'integrations': [
            {'integration_type': 'git_repo', 'git_repo': 'mosaicml/llm-foundry', 'git_branch': 'release/v0.22.0',
             'pip_install': '-e .[gpu]', 'ssh_clone': False},
            {'integration_type': 'git_repo', 'git_repo': PLUGIN_REPO, 'git_branch': 'main', 'pip_install': '.',
             'ssh_clone': False},
        ],
        'command': f'cd llm-foundry/scripts/train && composer train.py /mnt/config/parameters.yaml {args}'.rstrip(),
        'parameters': cfg,
    }


def main_mcloud_jobs() -> dict[str, dict[str, Any]]:
    """Job files for the main runs: every 30B-token 1.3B/13B run of the paper's tables and the
    1.3B comparison at its default σ² and first seed."""
    yamls = shipped_train_yamls()
    jobs = {}
    for rel, (_, cfg) in yamls.items():
        parts = rel[:-5].split('/')
        if parts[1] in ('1b', '13b') and (parts[2].startswith(('small-', 'wesar-')) or parts[2] == 'compare-10b'):
            name = '-'.join(parts[1:]).replace('_', '-')
            jobs[f'mcloud/{name}.yaml'] = mcloud_job(rel, cfg, [], f'wesar-{name}')
    return jobs


def sweep_jobs(save_root: str = SAVE_ROOT_UNSET) -> dict[str, dict[str, Any]]:
    """The 1.3B comparison sweep: σ² grid × seeds for WN/σReparam/WeSaR, seeds for the others,
    as command-line overrides of the shipped YAML. Each job's run name is its own, and so is its
    save folder ``<save_root>/<run_name>``."""
    jobs = {}
    for method in COMPARE_METHODS:
        rel = f'pretrain/1b/compare-10b/{method}.yaml'
        _, cfg = shipped_train_yamls()[rel]
        grid = SIGMA2_GRID if method in GRID_METHODS else (None,)
        for sigma2 in grid:
            for seed in SEEDS:
                overrides = sweep_overrides(method, sigma2, seed)
                name = overrides[-1].split('=', 1)[1]
                jobs[f'{name.removeprefix("wesar-1b-sweep-")}.yaml'] = mcloud_job(rel, cfg, overrides, name, save_root)
    return jobs


def sweep_overrides(method: str, sigma2: float | None, seed: int) -> list[str]:
    """One sweep run's command-line overrides of its compare-10b YAML, its own run name last (and
    so its own save folder: a shared one would autoresume another variant's checkpoint)."""
    tag = method.replace('_', '-') + (f'-s{round(sigma2 / 1e-5)}e-5' if sigma2 is not None else '') + f'-seed{seed}'
    sigma = [f'model.init_config.sigma2={_short_float(sigma2)}'] if sigma2 is not None else []
    return [*sigma, f'seed={seed}', f'variables.run_name=wesar-1b-sweep-{tag}']


def _short_float(x: float) -> str:
    """1.6e-4, not 0.00016: the σ² grid as the paper writes it."""
    mantissa, exponent = f'{x:e}'.split('e')
    return f'{mantissa.rstrip("0").rstrip(".")}e{int(exponent)}'


def dump(cfg: dict[str, Any], header: str = '') -> str:
    return header + yaml.safe_dump(cfg, sort_keys=False, width=120)


def _job_header(what: str, save_root: str) -> str:
    lines = [f'# {what}: mcli run -f <this file>',
             "# env_variables FSDP_VERSION: '2' selects Composer's FSDP2 (the WeSaR models refuse its FSDP1)."]
    if save_root == SAVE_ROOT_UNSET:
        lines += ['# First set parameters.variables.save_root to an object store, e.g. s3://YOUR-BUCKET/wesar-foundry',
                  '# (runs save and autoresume in <save_root>/<run_name>; the container\'s disk does not outlive it).',
                  f'# Left at {SAVE_ROOT_UNSET}, the run stops at start: "Missing mandatory value: variables.save_root".']
    lines += ['# Data: the container starts empty, so set parameters.variables.data_remote and eval_data_remote to where',
              '# `wesar-foundry prepare --out s3://YOUR-BUCKET/data/<name> ...` put them (data_local/eval_data_local are then',
              "# streaming's cache). Left unset, wesar_data_check stops the run before any compute, naming these keys."]
    return '\n'.join(lines) + '\n'


def write_all(root: Path) -> list[Path]:
    """Write the shipped YAMLs and main job files under ``root`` (the repo's ``yamls/``)."""
    files = {rel: dump(cfg, header) for rel, (header, cfg) in shipped_train_yamls().items()}
    header = _job_header('MosaicML platform job', SAVE_ROOT_UNSET)
    files.update({rel: dump(job, header) for rel, job in main_mcloud_jobs().items()})
    return [write_text(root / rel, text) for rel, text in files.items()]


def write_sweep(out: Path, save_root: str = SAVE_ROOT_UNSET) -> list[Path]:
    """Write the whole 1.3B σ²×seed sweep as job files into ``out``, saving under ``save_root``."""
    header = _job_header('MosaicML platform job (1.3B comparison sweep)', save_root)
    return [write_text(out / rel, dump(job, header)) for rel, job in sweep_jobs(save_root).items()]


if __name__ == '__main__':
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else 'yamls')):
        print(p)
