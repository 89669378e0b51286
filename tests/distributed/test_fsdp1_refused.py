"""A launch without ``FSDP_VERSION=2`` (Composer then takes FSDP1 for an ``fsdp_config``) over two CPU
ranks, as users start it: DDP (no ``fsdp_config``) trains; the paper YAML with its ``fsdp_config``
is refused by ``wesar_llama`` with the fix, before Composer's FSDP1 wrap (which on CPU would stop on
"Found no NVIDIA driver"). One launch: the DDP job first, then the refused one ends it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.configs import overrides
from tests.distributed.launch import result, run_train_jobs

pytestmark = pytest.mark.distributed


def launch_job(name: str, work: Path, data: Path, *extra: str) -> dict:
    cwd = work / name
    return {'reparam': 'wesar', 'cwd': str(cwd), 'out': str(cwd / 'out'),
            'overrides': overrides(data, cwd / 'checkpoints', name, 2, *extra)}


def test_a_launch_without_fsdp_version_2_trains_ddp_and_refuses_fsdp1(tiny_data, tmp_path):
    ddp = launch_job('ddp', tmp_path, tiny_data, 'fsdp_config=null', 'max_duration=2ba', 'save_interval=2ba')
    fsdp1 = launch_job('fsdp1', tmp_path, tiny_data)
    run_train_jobs([ddp, fsdp1], tmp_path, expect_failure=True, fsdp_version=None)

    trained = result(ddp)
    assert trained['world_size'] == 2 and trained['sharded_params'] == 0  # DDP: whole parameters
    assert sorted(trained['metrics']['loss/train/total']) == [0, 1]

    # Rank 0 writes to the launcher's console (launch.log), rank 1 to its own files.
    logs = {p.name: p.read_text() for p in [tmp_path / 'launch.log', *tmp_path.glob('rank*.std*')]}
    refused = [name for name, text in logs.items()
               if 'ValueError: wesar_llama: Composer is about to wrap this model with FSDP1' in text]
    assert 'launch.log' in refused and 'rank1.stderr' in refused, f'logs in {tmp_path}'
    text = logs['rank1.stderr']
    assert 'FSDP_VERSION=2' in text and "env_variables: {FSDP_VERSION: '2'}" in text and 'WESAR_ALLOW_FSDP1=1' in text
    assert not any('NVIDIA driver' in t for t in logs.values())
    assert not (Path(fsdp1['cwd']) / 'checkpoints').exists()  # not a single step
