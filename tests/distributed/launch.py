"""Start a script on two CPU ranks with Composer's launcher (gloo), as users start training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name('driver.py')
COMPOSER = Path(sys.executable).with_name('composer')


def run_ranks(script: Path, args: list[str], cwd: Path, n: int = 2, timeout: int = 600,
              expect_failure: bool = False, fsdp_version: str | None = '2') -> subprocess.CompletedProcess:
    """``FSDP_VERSION=2 composer -n <n> <script> <args>`` in ``cwd``; its own process group, so a
    rank can SIGKILL the whole job the way a preemption would. ``fsdp_version=None`` leaves
    ``FSDP_VERSION`` out of the environment (Composer then takes FSDP1), as a user's bare launch does."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE',
                                                             'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'FSDP_VERSION')}
    env.update(PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM='false', OMP_NUM_THREADS='1')
    if fsdp_version is not None:
        env['FSDP_VERSION'] = fsdp_version
    log = cwd / 'launch.log'
    with open(log, 'w') as out:
        proc = subprocess.run([str(COMPOSER), '-n', str(n), '--stdout', str(cwd / 'rank{rank}.stdout'),
                               '--stderr', str(cwd / 'rank{rank}.stderr'), str(script), *args],
                              cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              start_new_session=True)
    if expect_failure:
        assert proc.returncode != 0, f'the job was to fail (or be killed) but finished; see {cwd}'
    elif proc.returncode != 0:
        tails = '\n'.join(f'--- {p.name}\n{p.read_text()[-3000:]}' for p in sorted(cwd.glob('rank*.std*')) if p.is_file())
        raise AssertionError(f'two-rank job failed (exit {proc.returncode}); logs in {cwd}\n{log.read_text()[-2000:]}\n{tails}')
    return proc


def run_train_jobs(jobs: list[dict], work: Path, driver: Path = DRIVER, **kwargs) -> subprocess.CompletedProcess:
    """Run ``jobs`` (see ``driver.py``) one after another in one two-rank launch of ``driver``
    (``driver.py``, or a script that adds test callbacks to it)."""
    work.mkdir(parents=True, exist_ok=True)
    spec = work / 'jobs.json'
    spec.write_text(json.dumps(jobs, indent=1))
    return run_ranks(driver, [str(spec)], work, **kwargs)


def result(job: dict) -> dict:
    """What ``driver.py`` saved for a finished job."""
    return torch.load(Path(job['out']) / 'result.pt', weights_only=False)
