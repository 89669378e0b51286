"""Shared fixtures: a small prepared dataset (built offline, once) and tiny train configs."""

from __future__ import annotations

import atexit
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / 'yamls' / 'tiny' / 'wesar.yaml'



@pytest.fixture(autouse=True, scope='module')
def _release_streaming_shared_memory():
    """Close the shared memory every StreamingDataset of a test module opened, after the module.

    streaming keeps each block it opens until the process exits (``atexit.register(cleanup)``):
    about 36 file descriptors per ``train()``. One training per process, as users run it, never
    notices; this suite runs hundreds of ``train()`` in one process and ran out of descriptors.
    """
    from streaming.base.shared import memory
    opened = []
    original = memory.SharedMemory.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        opened.append(self)

    memory.SharedMemory.__init__ = init
    try:
        yield
    finally:
        memory.SharedMemory.__init__ = original
        for shm in opened:
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


@pytest.fixture
def train_cfg(tiny_data, tmp_path):
    """A function giving the shipped tiny YAML, shrunk, on ``tiny_data``, with dotlist overrides."""

    def make(*overrides: str, **model: object):
        cfg = OmegaConf.load(TINY_YAML)
        cfg.variables.data_local = str(tiny_data)
        cfg.variables.max_seq_len = TINY_MODEL['max_seq_len']
        cfg.model.update({**TINY_MODEL, **model})
        # Replaced, not merged: the shipped YAML's monitors and JSONL logger stay out of tests
        # unless a test adds them (a merge of {} would keep them).
        cfg.callbacks = {}
        cfg.loggers = {'inmemory': {}}
        base = ['max_duration=10ba', 'eval_interval=5ba', 'eval_subset_num_batches=2', 'global_train_batch_size=8',
                'device_train_batch_size=8', 'device_train_microbatch_size=8', 'device_eval_batch_size=8',
                'console_log_interval=100ba', 'scheduler.t_warmup=2ba', f'run_name=t-{tmp_path.name}']
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(base + list(overrides)))

    return make
