"""A run that diverges over two ranks stops on both, before the diverged update, and leaves only
finite sharded checkpoints with ``latest`` on the newest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.distributed.conftest import job
from tests.distributed.configs import warmup_tokens
from tests.distributed.launch import run_train_jobs

# Adam warming up to lr 1000 over 20 steps: non-finite within 20 steps.
DIVERGE = ('optimizer.lr=1000', f'scheduler.t_warmup={warmup_tokens(20)}tok', 'max_duration=30ba', 'save_interval=2ba',
           'save_num_checkpoints_to_keep=2')


@pytest.fixture(scope='module')
def diverged(tiny_data, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp('diverged')
    j = job('wesar', work, tiny_data, 2, *DIVERGE, name='diverged')
    run_train_jobs([j], work / 'launch', expect_failure=True)
    cwd = Path(j['cwd'])
    rows = [json.loads(line) for line in (cwd / 'checkpoints' / 'metrics.jsonl').read_text().splitlines()]
    logs = {'rank0': (work / 'launch' / 'launch.log').read_text(), 'rank1': (work / 'launch' / 'rank1.stderr').read_text()}
    return {'folder': cwd / 'checkpoints', 'rows': rows, 'logs': logs, 'work': work}


def test_both_ranks_stop_with_the_step_that_went_non_finite(diverged):
    [step] = [r['loss_spike/nonfinite_step'] for r in diverged['rows'] if 'loss_spike/nonfinite_step' in r]
    for rank, text in diverged['logs'].items():
        assert 'NonFiniteLossError' in text and f'non-finite loss or gradient at step {step}' in text, rank
    losses = {r['step'] + 1 for r in diverged['rows'] if 'loss/train/total' in r}
    assert losses == set(range(1, step))  # the diverged step never reached the optimizer


def test_only_finite_sharded_checkpoints_remain_and_latest_is_the_newest(diverged):
    folder = diverged['folder']
    kept = sorted((p for p in folder.glob('ep0-ba*')), key=lambda p: int(p.name.split('ba')[1]))
    assert len(kept) == 2 and all((p / '.metadata').is_file() for p in kept)
    assert (folder / 'latest-sharded-rank0').resolve() == kept[-1].resolve()
    for ckpt in kept:
        out = diverged['work'] / f'{ckpt.name}.pt'
        dcp_to_torch_save(ckpt, out)
        weights = torch.load(out, weights_only=False)['state']['model']
        assert weights and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), ckpt.name
