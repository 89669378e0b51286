"""Shared fixtures: a small prepared dataset (built offline, once) and tiny train configs."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import TINY_MODEL, without_saving

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / 'yamls' / 'tiny' / 'wesar.yaml'
PIP = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '--no-input', '-q']


def pytest_sessionstart(session):
    # -q hides pytest's header; CI's log then tells the install's time from the suite's.
    print(f'\n[suite] started {time.strftime("%H:%M:%S", time.gmtime())} UTC', file=sys.stderr, flush=True)



@pytest.fixture(autouse=True, scope='module')
def _release_streaming_datasets():
    """Stop the threads and close the shared memory of every StreamingDataset a test module made.

    streaming keeps each shared-memory block it opens until the process exits
    (``atexit.register(cleanup)``), about 36 file descriptors per ``train()``, and a dataset whose
    epoch was cut short by ``max_duration`` keeps its download threads polling. One training per
    process, as users run it, never notices; this suite runs hundreds of ``train()`` in one
    process, ran out of descriptors, and slowed to a crawl under hundreds of polling threads.
    """
    from streaming import StreamingDataset
    from streaming.base.shared import memory
    datasets, blocks = [], []
    dataset_init, memory_init = StreamingDataset.__init__, memory.SharedMemory.__init__

    def track_dataset(self, *args, **kwargs):
        dataset_init(self, *args, **kwargs)
        datasets.append(self)

    def track_memory(self, *args, **kwargs):
        memory_init(self, *args, **kwargs)
        blocks.append(self)

    StreamingDataset.__init__, memory.SharedMemory.__init__ = track_dataset, track_memory
    try:
        yield
    finally:
        StreamingDataset.__init__, memory.SharedMemory.__init__ = dataset_init, memory_init
        for ds in datasets:  # threads first: they read the shared memory closed below
            if hasattr(ds, '_event'):
                ds._event.set()
            if hasattr(ds, '_executor'):
                ds._executor.shutdown(wait=True)
        for shm in blocks:
            atexit.unregister(shm.cleanup)
            shm.cleanup()


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own folder: run-name-relative outputs never land in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory) -> Path:
    """Tokenizer + train/val MDS from the embedded default corpus, capped for speed."""
    from wesar_foundry.data import PrepareConfig, prepare
    out = tmp_path_factory.mktemp('data') / 'wesar-data'
    return prepare(PrepareConfig(out=str(out), vocab_size=512, seq_len=32, max_chars=200_000))


def tiny_train_cfg(tiny_data: Path, run_name: str, *overrides: str, **model: object):
    """The shipped tiny YAML, shrunk, on ``tiny_data``, with dotlist overrides and model keys."""
    cfg = without_saving(OmegaConf.load(TINY_YAML))
    cfg.variables.data_local = str(tiny_data)
    cfg.variables.max_seq_len = TINY_MODEL['max_seq_len']
    cfg.model.update({**TINY_MODEL, **model})
    # Replaced, not merged: the shipped YAML's monitors, export, JSONL logger and checkpoint stay out
    # of tests unless a test adds them (a merge of {} would keep them).
    cfg.callbacks = {}
    cfg.loggers = {'inmemory': {}}
    base = ['max_duration=10ba', 'eval_interval=5ba', 'eval_subset_num_batches=2', 'global_train_batch_size=8',
            'device_train_batch_size=8', 'device_train_microbatch_size=8', 'device_eval_batch_size=8',
            'console_log_interval=100ba', 'scheduler.t_warmup=2ba', f'run_name={run_name}']
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(base + list(overrides)))


@pytest.fixture
def train_cfg(tiny_data, tmp_path):
    """A function giving ``tiny_train_cfg`` with this test's run name."""
    return lambda *overrides, **model: tiny_train_cfg(tiny_data, f't-{tmp_path.name}', *overrides, **model)


@pytest.fixture(scope='session')
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed into): a non-editable install outside the checkout.

    Built offline from a copy of the package and pyproject.toml (building in the checkout would
    write build/ and an egg-info into it), installed with ``pip install --target``."""
    tmp = tmp_path_factory.mktemp('install')
    src = tmp / 'src'
    src.mkdir()
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / 'wesar_foundry', src / 'wesar_foundry', ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    subprocess.run([*PIP, 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-w', str(tmp / 'dist'), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp / 'dist').glob('wesar_foundry-*.whl'))
    site = tmp / 'site'
    subprocess.run([*PIP, 'install', '--no-deps', '--no-index', '--target', str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return wheel, site
