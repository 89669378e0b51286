"""The shipped paper YAMLs and MosaicML job files: complete, valid, and what the paper ran."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.helpers import docs_text
from tests.pypi_index import (
    _PIP_IN_IMAGE, IMAGE_MARKERS, IMAGE_PLATFORMS, IMAGE_TAGS, PIP_FOR_DRY_RUN, _http, _lock_pins, _MetadataIndex,
)
import wesar_foundry
from wesar_foundry.commands import paper
from wesar_foundry.commands.tiny import tiny_yamls

ROOT = Path(__file__).resolve().parents[2]
YAMLS = paper.shipped_train_yamls()
MCLOUD_JOBS = sorted((ROOT / 'yamls' / 'mcloud').glob('*.yaml'))


def resolved(cfg: DictConfig, overrides: Sequence[str] = ()):
    """The config as llm-foundry's ``train_from_yaml`` sees it: command-line overrides merged in,
    then resolved and checked into its ``TrainConfig``."""
    from llmfoundry.command_utils.train import TRAIN_CONFIG_KEYS, TrainConfig
    from llmfoundry.utils.config_utils import make_dataclass_and_log_config
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_cli(list(overrides)))
    return make_dataclass_and_log_config(cfg, TrainConfig, TRAIN_CONFIG_KEYS, transforms='all')[1]


def shipped(rel: str, overrides: Sequence[str] = ()):
    return resolved(OmegaConf.load(ROOT / 'yamls' / rel), overrides)


def test_committed_yamls_equal_the_generator_output(tmp_path):
    paper.write_all(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*.yaml'))
    assert generated, 'nothing generated'
    for rel in generated:
        assert (ROOT / 'yamls' / rel).read_text() == (tmp_path / rel).read_text(), f'regenerate: python -m wesar_foundry.commands.paper yamls ({rel})'


def test_every_method_ships_in_both_settings_at_every_size():
    for size in ('130m', '1b', '13b'):
        for method in ('small', 'he', 'weight_norm', 'sigma_reparam', 'residual_scaling', 'wesar'):
            for setting in ('rapid', 'stable'):
                assert (ROOT / 'yamls' / 'pretrain' / size / f'{method}-{setting}.yaml').is_file()


@pytest.mark.parametrize('rel', sorted(YAMLS))
def test_shipped_yaml_passes_llmfoundry_validation(rel):
    from llmfoundry.command_utils.train import validate_config
    train_cfg = shipped(rel)
    validate_config(train_cfg)
    assert train_cfg.max_seq_len == 2048 and train_cfg.precision == 'amp_bf16'
    tokens = train_cfg.global_train_batch_size * 2048
    assert tokens in (2 ** 20, 4 * 2 ** 20)
    lr = train_cfg.optimizer['lr']
    # Warmup in tokens: 100 steps of 2^20 (Rapid), 2000 steps of 2^22 (Stable).
    warmup = (tokens, lr, train_cfg.scheduler['t_warmup'])
    assert warmup in ((2 ** 20, 1e-3, f'{100 * 2 ** 20}tok'), (4 * 2 ** 20, 5e-4, f'{2000 * 4 * 2 ** 20}tok'))
    assert train_cfg.optimizer['weight_decay'] == pytest.approx(0.01 * lr)  # decoupled: wd not × lr
    assert train_cfg.optimizer['betas'] == [0.9, 0.95]
    assert train_cfg.algorithms['gradient_clipping']['clipping_threshold'] == 1.0
    assert train_cfg.optimizer['param_groups'] == [{'param_str_match': r'\.(alpha|g|gamma|row_mult|col_mult)$', 'weight_decay': 0.0}]
    mp = train_cfg.fsdp_config['mixed_precision']
    assert isinstance(mp, dict) and mp['buffer_dtype'] == 'fp32'  # RoPE tables stay fp32
    assert train_cfg.model['z_loss'] == 1e-4 and train_cfg.model['vocab_size'] == 32000
    assert train_cfg.eval_loader['dataset']['local'] == './data/wikitext'


def test_every_shipped_param_groups_is_the_one_no_decay_group():
    # The paper YAMLs and job files, the tiny YAMLs (every family) and the demo all carry GATE_PARAM_GROUPS.
    files = [*(ROOT / 'yamls').glob('pretrain/**/*.yaml'), *(ROOT / 'yamls' / 'mcloud').glob('*.yaml'),
             *tiny_yamls()]
    assert len(files) > 50
    for path in files:
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        optimizer = cfg['parameters']['optimizer'] if 'parameters' in cfg else cfg['optimizer']
        assert optimizer['param_groups'] == paper.GATE_PARAM_GROUPS, path


def test_llmfoundrys_param_group_builder_keeps_the_multipliers_out_of_weight_decay():
    """reparam multipliers (row_column): α, every row and column vector, and nothing else, in the
    shipped no-decay group, built by llm-foundry's own builder from the shipped optimizer block."""
    from llmfoundry.utils.builders import build_optimizer

    from tests.helpers import TINY_MODEL
    from wesar_foundry.foundry.composer_models import WeSaRLlamaComposerModel
    model = WeSaRLlamaComposerModel(**TINY_MODEL, init_device='meta', reparam='multipliers', multipliers='row_column',
                                    init_config={'name': 'wesar_', 'target': 'he', 'sigma2': 4e-5})
    optimizer = {k: v for k, v in YAMLS['pretrain/1b/wesar-rapid.yaml'][1]['optimizer'].items() if k != 'name'}
    groups = build_optimizer(model, 'decoupled_adamw', optimizer).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g['weight_decay'] == 0.0 for p in g['params']}
    decayed = {names[id(p)] for g in groups if g['weight_decay'] > 0 for p in g['params']}
    leaves = {n.rpartition('.')[2] for n in no_decay}
    assert leaves == {'alpha', 'row_mult', 'col_mult'}
    mats = model.model.reparam_modules()
    assert len(no_decay) == 3 * len(mats) and len(mats) > 2
    assert decayed and not any(n.endswith(('alpha', 'row_mult', 'col_mult')) for n in decayed)
    assert no_decay | decayed == set(names.values())


def count(size: str, method: str) -> tuple[int, dict]:
    from wesar_foundry.foundry.composer_models import WeSaRLlamaComposerModel
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / 'yamls' / 'pretrain' / size / f'{method}-rapid.yaml'), resolve=True)
    kwargs = {k: v for k, v in cfg['model'].items() if k != 'name'}
    model = WeSaRLlamaComposerModel(**kwargs)
    assert all(p.is_meta for p in model.parameters())  # built without allocating
    return sum(p.numel() for p in model.parameters()), model.model.reparam_modules()


def test_1b_parameter_counts_match_the_paper():
    plain, mats = count('1b', 'small')
    assert plain == 1_339_131_904
    assert len(mats) == 2 + 6 * 24
    assert count('1b', 'wesar')[0] == plain + len(mats)
    assert count('1b', 'sigma_reparam')[0] == plain + len(mats)
    assert count('1b', 'residual_scaling')[0] == plain
    assert count('1b', 'weight_norm')[0] == plain + sum(m.weight.shape[0] for m in mats.values())


@pytest.mark.parametrize('size, approx', [('130m', 134e6), ('1b', 1.34e9), ('13b', 13e9)])
@pytest.mark.parametrize('method', sorted(paper.METHODS))
def test_every_size_and_method_builds_on_meta_at_the_expected_scale(size, approx, method):
    n, _ = count(size, method)  # asserts every parameter is on the meta device
    assert n == pytest.approx(approx, rel=0.05)


def test_13b_gates_are_the_method_docs_values():
    from wesar_foundry.core.init_targets import target_std
    sigma = 4e-5 ** 0.5
    assert target_std('down', 'he', 5120, 40) / sigma == pytest.approx(0.17469, rel=2e-5)


@pytest.mark.parametrize('path', sorted((ROOT / 'yamls' / 'mcloud').glob('*.yaml')), ids=lambda p: p.name)
def test_mcloud_job_files_parse_with_mcli(path):
    from mcli.models.run_config import FinalRunConfig, RunConfig
    run = RunConfig.from_file(str(path))
    api = FinalRunConfig.finalize_config(run).to_create_run_api_input()  # mcli's own validation, offline
    assert run.image.startswith('mosaicml/llm-foundry:2.7.0') and 'composer train.py' in run.command
    assert [i['git_repo'] for i in run.integrations] == ['mosaicml/llm-foundry', paper.PLUGIN_REPO]
    assert run.parameters['model']['name'] == 'wesar_llama' and api


def test_sweep_covers_the_grid_and_seeds_as_overrides(tmp_path):
    from mcli import RunConfig
    files = paper.write_sweep(tmp_path)
    assert len(files) == 3 * 5 * 5 + 2 * 5
    job = RunConfig.from_file(str(tmp_path / 'wesar-s256e-5-seed19.yaml'))
    args = job.command.split('parameters.yaml ')[1].split()
    merged = OmegaConf.merge(OmegaConf.create(job.parameters), OmegaConf.from_dotlist(args))
    assert merged.seed == 19 and merged.model.init_config.sigma2 == pytest.approx(2.56e-3)
    sigmas = {f.name.split('-s')[1].split('-seed')[0] for f in files if f.name.startswith('weight-norm-s')}
    assert len(sigmas) == 5


# --- One save folder per run ----------------------------------------------------------------

@pytest.mark.parametrize('rel', sorted(YAMLS))
def test_shipped_yaml_saves_in_a_folder_named_after_its_run(rel):
    cfg = shipped(rel)
    assert cfg.save_folder == f'./checkpoints/{cfg.run_name}' and cfg.autoresume


@pytest.mark.slow
def test_every_sweep_job_saves_and_resumes_in_a_folder_of_its_own(tmp_path):
    from mcli import RunConfig
    save_root = 's3://bucket/wesar-foundry'
    folders = []
    for path in paper.write_sweep(tmp_path, save_root):
        job = RunConfig.from_file(str(path))
        cfg = resolved(OmegaConf.create(job.parameters), job.command.split('parameters.yaml ')[1].split())
        assert cfg.run_name == job.name and cfg.autoresume
        assert cfg.save_folder == f'{save_root}/{job.name}'
        assert cfg.callbacks['wesar_hf_checkpointer']['save_folder'] == cfg.save_folder
        folders.append(cfg.save_folder)
    assert len(set(folders)) == len(folders) == 85


@pytest.mark.parametrize('path', MCLOUD_JOBS, ids=lambda p: p.name)
def test_a_job_file_refuses_to_start_until_its_save_root_is_set(path):
    from mcli import RunConfig
    job = RunConfig.from_file(str(path))
    with pytest.raises(OmegaConfBaseException, match='Missing mandatory value: variables.save_root'):
        resolved(OmegaConf.create(job.parameters))
    cfg = resolved(OmegaConf.create(job.parameters), ['variables.save_root=gs://bucket/runs'])
    assert cfg.save_folder == f'gs://bucket/runs/{cfg.run_name}' and cfg.run_name.startswith('wesar-')


def test_make_sweep_requires_a_save_root(tmp_path):
    script = [sys.executable, str(ROOT / 'yamls' / 'mcloud' / 'make_sweep.py'), str(tmp_path / 'jobs')]
    refused = subprocess.run(script, capture_output=True, text=True)
    assert refused.returncode == 2 and '--save-root' in refused.stderr and not (tmp_path / 'jobs').exists()
    subprocess.run([*script, '--save-root', 's3://bucket/x'], check=True, capture_output=True)
    job = (tmp_path / 'jobs' / 'wesar-s4e-5-seed17.yaml').read_text()
    assert 'save_root: s3://bucket/x\n' in job and '???' not in job


# --- The cosine schedule is the full run's, whatever max_duration says -------------------------

def lr_factor(cfg, tokens: int, scheduler: dict[str, Any] | None = None) -> float:
    """The lr multiplier llm-foundry's scheduler gives after ``tokens`` tokens of the run ``cfg``."""
    import torch
    from composer.core import State, Timestamp
    from composer.devices import DeviceCPU
    from llmfoundry.utils.builders import build_scheduler
    kwargs = dict(scheduler or cfg.scheduler)
    schedule = build_scheduler(kwargs.pop('name'), kwargs)
    state = State(model=torch.nn.Linear(1, 1), rank_zero_seed=0, run_name='lr', device=DeviceCPU(),
                  max_duration=cfg.max_duration)
    batch_tokens = cfg.global_train_batch_size * cfg.max_seq_len
    state.timestamp = Timestamp(batch=tokens // batch_tokens, sample=tokens // cfg.max_seq_len, token=tokens)
    return schedule(state)


@pytest.mark.parametrize('rel', sorted(YAMLS))
def test_every_shipped_schedule_warms_up_then_decays_to_a_tenth_at_the_end(rel):
    cfg = shipped(rel)
    warmup = int(cfg.scheduler['t_warmup'].removesuffix('tok'))
    end = int(cfg.max_duration.removesuffix('tok'))
    assert cfg.scheduler['t_max'] == cfg.max_duration
    assert lr_factor(cfg, 0) == 0.0
    assert lr_factor(cfg, warmup // 2) == pytest.approx(0.5)
    assert lr_factor(cfg, warmup) == pytest.approx(1.0)
    assert lr_factor(cfg, end) == pytest.approx(0.1)


def test_figure_1s_5b_token_runs_follow_the_30b_schedule():
    """README's Figure-1 recipe: the 13B 30B-token YAML with ``max_duration=5000000000tok``."""
    full = shipped('pretrain/13b/small-rapid.yaml')
    fig1 = shipped('pretrain/13b/small-rapid.yaml', ['max_duration=5000000000tok'])
    warmup, t = 100 * 2 ** 20, 2_500_000_000
    expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (30e9 - warmup)))  # 0.984
    assert lr_factor(fig1, t) == pytest.approx(lr_factor(full, t)) == pytest.approx(expected)
    # Composer's default t_max (1dur) would have decayed over the 5B tokens instead.
    five_b_schedule = {k: v for k, v in fig1.scheduler.items() if k != 't_max'}
    assert lr_factor(fig1, t, five_b_schedule) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * (t - warmup) / (5e9 - warmup))))
    assert lr_factor(fig1, t, five_b_schedule) < 0.6 < expected


# --- Merged Llama exports during training -----------------------------------------------------

def hf_exporter(cfg):
    from llmfoundry.utils.builders import build_callback
    return build_callback('wesar_hf_checkpointer', dict(cfg.callbacks['wesar_hf_checkpointer']), cfg)


@pytest.mark.parametrize('rel', sorted(YAMLS))
def test_every_shipped_yaml_exports_llama_checkpoints_into_its_save_folder(rel):
    from composer.core import Time
    from wesar_foundry.foundry.callbacks.checkpointer import WeSaRHuggingFaceCheckpointer
    cfg = shipped(rel)
    exporter = hf_exporter(cfg)
    assert isinstance(exporter, WeSaRHuggingFaceCheckpointer)
    assert exporter.save_dir_format_str == cfg.save_folder  # files go to <save_folder>/huggingface/ba<N>
    assert exporter.save_interval == Time.from_timestring('5000000000tok')
    assert exporter.export_dtype is None  # the training dtype: bf16


@pytest.mark.parametrize('max_duration, tokens_seen, exports', [
    ('30000000000tok', (4_000_000_000, 5_000_000_000, 6_000_000_000), [False, True, False]),  # every 5B
    ('5000000000tok', (4_000_000_000, 5_000_000_000), [False, True]),  # Figure 1: at its end
    ('3000000000tok', (2_000_000_000, 3_000_000_000), [False, True]),  # any end, not only a multiple of 5B
])
def test_the_exporter_saves_every_5b_tokens_and_at_the_end_of_training(max_duration, tokens_seen, exports):
    import torch
    from composer.core import Event, State, Timestamp
    from composer.devices import DeviceCPU
    cfg = shipped('pretrain/13b/wesar-rapid.yaml', [f'max_duration={max_duration}'])
    exporter = hf_exporter(cfg)
    state = State(model=torch.nn.Linear(1, 1), rank_zero_seed=0, run_name='x', device=DeviceCPU(),
                  max_duration=cfg.max_duration)
    step = 2 ** 20
    saved = []
    for tokens in tokens_seen:  # the batch that reaches `tokens`
        state.previous_timestamp = Timestamp(batch=tokens // step - 1, token=tokens - step)
        state.timestamp = Timestamp(batch=tokens // step, token=tokens)
        saved.append(exporter.check_interval(state, Event.BATCH_CHECKPOINT))
    assert saved == exports


# --- The MosaicML job's `pip install .` on the image's Python 3.12 -----------------------------

def test_requires_python_admits_the_images_python_and_ours():
    spec = SpecifierSet(tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['requires-python'])
    assert '3.12' in spec and '3.11' in spec  # the image's (mosaicml/llm-foundry:2.7.0_cu128) and CI's


@pytest.mark.slow
# mosaicml/pytorch:2.7.0_cu128-python3.12-ubuntu22.04: CPython 3.12 on glibc 2.35. pip does not
# widen a manylinux tag to older glibcs, so every one is listed.
@pytest.mark.network
def test_the_jobs_pip_install_resolves_for_the_images_python_3_12(tmp_path, request):
    """The job's ``pip install .`` of this plugin, resolved for the image (CPython 3.12, manylinux
    x86_64, wheels only) from PyPI with pip's own resolver, as a dry run.

    Not resolved: llm-foundry's ``gpu`` extra (the image installs it; flash-attn compiles from an
    sdist). Pinned to ``constraints.txt``, our Python 3.11 lock, so that pip needs no backtracking
    (unpinned, it spends minutes on wandb × protobuf): so this shows that the lock's versions, with
    llm-foundry 0.22.0 and torch 2.7.0, all have wheels for the image, and that our wheel's
    Requires-Python admits 3.12. Measured 40–50 s behind a slow PyPI proxy on a loaded 2-core
    machine (and once, a few seconds to download pip); needs PyPI (or a PEP 691 index named by
    PIP_INDEX_URL); deselect offline with ``-m 'not network'``.
    """
    upstream = os.environ.get('PIP_INDEX_URL', 'https://pypi.org/simple/').rstrip('/') + '/'
    try:
        _http(f'{upstream}llm-foundry/', {'Accept': 'application/vnd.pypi.simple.v1+json'})
    except OSError as e:
        pytest.fail(f'cannot reach {upstream} ({e}): this test needs PyPI; deselect it offline with -m "not network"')
    # pip's settings here (indexes, find-links, constraints) are not the image's: none apply.
    env = {k: v for k, v in os.environ.items() if not k.startswith('PIP_')} | {'PIP_CONFIG_FILE': os.devnull}

    pytest_cache = getattr(request.config, 'cache', None)  # None under -p no:cacheprovider
    cache = Path(pytest_cache.mkdir('pip-for-dry-run')) if pytest_cache else tmp_path
    if not list(cache.glob('pip-*.whl')):
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:',
                        '-d', str(cache), PIP_FOR_DRY_RUN], check=True)
    pip_wheel = max(cache.glob('pip-*.whl'), key=lambda p: parse_wheel_filename(p.name)[1])

    # Our wheel, built from a copy: setuptools writes build/ and egg-info next to the sources.
    src = tmp_path / 'src'
    shutil.copytree(ROOT / 'wesar_foundry', src / 'wesar_foundry', ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
                    '-w', str(tmp_path / 'dist'), str(src)], check=True, env=env)
    wheel = next((tmp_path / 'dist').glob('wesar_foundry-*.whl'))

    lock = ROOT / 'constraints.txt'
    index = _MetadataIndex(upstream, _lock_pins(lock))
    threading.Thread(target=index.serve_forever, daemon=True).start()
    try:
        report = tmp_path / 'report.json'
        proc = subprocess.run(
            [sys.executable, '-c', _PIP_IN_IMAGE, str(pip_wheel), json.dumps(IMAGE_MARKERS),
             'install', '--dry-run', '--ignore-installed', '--no-cache-dir', '--disable-pip-version-check',
             '--timeout', '30', '--retries', '2', '--quiet', '--report', str(report),
             '--python-version', '3.12', '--only-binary=:all:', *(f'--platform={p}' for p in IMAGE_PLATFORMS),
             '--index-url', f'{index.url}/simple/', '--constraint', str(lock), str(wheel)],
            env=env, capture_output=True, text=True, timeout=300)  # a slow index fails this test, not CI's budget
    finally:
        index.close()
    assert proc.returncode == 0, proc.stderr[-4000:]

    resolution = json.loads(report.read_text())
    assert resolution['environment']['python_version'] == '3.12'  # the markers pip evaluated
    versions = {canonicalize_name(i['metadata']['name']): i['metadata']['version'] for i in resolution['install']}
    assert versions['wesar-foundry'] == wesar_foundry.__version__
    assert versions['llm-foundry'] == '0.22.0' and versions['mosaicml'] == '0.32.1'
    assert versions['torch'] == '2.7.0' and versions['transformers'].startswith('4.51.')
    assert 'flash-attn' not in versions
    for item in resolution['install']:
        filename = item['download_info']['url'].rsplit('/', 1)[1]
        assert parse_wheel_filename(filename)[3] & IMAGE_TAGS, filename


# --- FSDP2 on every shipped multi-GPU route -------------------------------------------------------

def all_jobs(tmp_path) -> list[Path]:
    """Every shipped job file and every sweep job."""
    return MCLOUD_JOBS + paper.write_sweep(tmp_path / 'sweep', 's3://bucket/wesar-foundry')


def test_every_shipped_and_sweep_job_selects_fsdp2(tmp_path):
    from mcli.models.run_config import FinalRunConfig, RunConfig
    jobs = all_jobs(tmp_path)
    assert len(jobs) == len(paper.main_mcloud_jobs()) + 85
    for path in jobs:
        run = RunConfig.from_file(str(path))
        assert run.env_variables == {'FSDP_VERSION': '2'}, path.name
        api = FinalRunConfig.finalize_config(run).to_create_run_api_input()  # what mcli sends
        assert {'envKey': 'FSDP_VERSION', 'envValue': '2'} in api['runInput']['envVariables'], path.name


@pytest.mark.parametrize('rel', sorted(YAMLS))
def test_every_yaml_header_prints_the_fsdp2_launch_from_a_pip_install(rel):
    header, _ = YAMLS[rel]
    launch = next(line for line in header.splitlines() if 'composer' in line)
    assert launch.startswith('#   FSDP_VERSION=2 composer -n 8 ') and '-m llmfoundry.cli.cli train <this yaml>' in launch
    assert ('--world_size 64' in launch) == rel.startswith('pretrain/13b/')


def test_the_sweep_gives_every_variant_its_own_run_name_in_the_readmes_form(tmp_path):
    from mcli import RunConfig
    paper.write_sweep(tmp_path, 's3://b/x')
    job = RunConfig.from_file(str(tmp_path / 'wesar-s16e-5-seed19.yaml'))
    expected = 'model.init_config.sigma2=1.6e-4 seed=19 variables.run_name=wesar-1b-sweep-wesar-s16e-5-seed19'
    assert job.command.endswith(f'parameters.yaml {expected}') and job.name == 'wesar-1b-sweep-wesar-s16e-5-seed19'
    assert expected in ' '.join(docs_text().split())  # the docs show the writer's form
    cfg = resolved(OmegaConf.create(job.parameters), expected.split())
    assert cfg.model['init_config']['sigma2'] == pytest.approx(1.6e-4) and cfg.seed == 19  # parsed as numbers


def test_every_documented_sigma2_or_seed_override_comes_with_a_run_name():
    text = docs_text()
    commands = [c for c in text.replace('\\\n', ' ').splitlines() + text.split('`')
                if 'model.init_config.sigma2=' in c and 'seed=' in c]
    assert commands
    for command in commands:
        assert 'variables.run_name=' in command, command


def test_every_documented_multi_gpu_launch_sets_fsdp_version_2():
    text = docs_text().replace('\\\n', ' ')
    launches = [c for c in text.splitlines() + text.split('`') if 'llmfoundry.cli.cli train' in c and 'composer -n' in c]
    assert len(launches) >= 4
    for launch in launches:
        assert 'FSDP_VERSION=2 composer -n' in launch, launch


# --- Data paths as variables, with an object store ------------------------------------------------

def test_loaders_read_local_folders_unless_a_remote_is_given():
    cfg = shipped('pretrain/1b/wesar-rapid.yaml')
    for loader in (cfg.train_loader, cfg.eval_loader):
        assert loader['dataset']['remote'] is None
    cfg = shipped('pretrain/1b/wesar-rapid.yaml', ['variables.data_remote=s3://b/refinedweb',
                                                   'variables.eval_data_remote=gs://b/wikitext'])
    assert (cfg.train_loader['dataset']['remote'], cfg.train_loader['dataset']['local']) == ('s3://b/refinedweb', './data/refinedweb')
    assert (cfg.eval_loader['dataset']['remote'], cfg.eval_loader['dataset']['local']) == ('gs://b/wikitext', './data/wikitext')


# --- A job's save_root left unset stops llm-foundry's train() before any compute ------------------

def test_train_on_an_unedited_job_stops_naming_save_root_before_any_compute(tmp_path):
    from llmfoundry.command_utils import train
    from mcli import RunConfig
    job = RunConfig.from_file(str(ROOT / 'yamls' / 'mcloud' / '1b-wesar-rapid.yaml'))
    # Its data folders (./data/...) do not exist here: a later failure would name them instead.
    with pytest.raises(OmegaConfBaseException, match=r'Missing mandatory value: variables\.save_root'):
        train(OmegaConf.create(job.parameters))
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


# --- The GPU commands from a pip install ------------------------------------------------------------

def test_configs_writes_the_shipped_yamls_and_refuses_to_overwrite(tmp_path):
    from wesar_foundry.commands.cli import main
    out = tmp_path / 'wesar-yamls'
    assert main(['configs', '--out', str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob('*') if p.is_file())
    assert written == sorted([*YAMLS, *paper.main_mcloud_jobs(), *(f'tiny/{p.name}' for p in tiny_yamls())])
    for rel in written:  # what the repository ships
        assert (out / rel).read_text() == (ROOT / 'yamls' / rel).read_text(), rel
    assert main(['configs', '--out', str(out)]) == 2  # exists: refused, untouched
    assert main(['configs', '--out', str(out), '--force', '--sweep-save-root', 's3://b/x']) == 0
    assert len(list((out / 'mcloud' / 'sweep').glob('*.yaml'))) == 85
    assert not [p for p in tmp_path.iterdir() if p.name != 'wesar-yamls']  # no staging left behind


@pytest.mark.slow
def test_the_documented_launch_resolves_in_the_installed_environment(tmp_path):
    assert Path(sys.executable).with_name('composer').is_file()  # the launcher comes with Composer
    # `composer -n 8 -m llmfoundry.cli.cli train <yaml>` runs `python -m llmfoundry.cli.cli train <yaml>` per rank.
    proc = subprocess.run([sys.executable, '-m', 'llmfoundry.cli.cli', 'train', '--help'], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and 'YAML_PATH' in proc.stdout.upper(), proc.stderr[-2000:]
