"""The two-rank tier: every paper method trained over two CPU ranks with FSDP2 (one launch for
all of them), and the same configs in one process, shared by the tests of this folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.distributed.configs import PAPER_METHOD, load, overrides
from tests.distributed.launch import result, run_train_jobs

REPARAMS = tuple(PAPER_METHOD) + ('multipliers',)
# A reparam without a paper YAML of its own: the YAML of the method it extends, switched by overrides.
SWITCHED = {'multipliers': ('wesar', 'model.reparam=multipliers')}
# The paper YAML's own FSDP mixed precision: bf16 parameters in the forward, fp32 reductions
# and buffers (Composer refuses amp_bf16 on CPU, but FSDP2's policy applies there).
BF16 = 'fsdp_config.mixed_precision={param_dtype: bf16, reduce_dtype: fp32, buffer_dtype: fp32}'
# WeSaR with σ chosen from the lr (sigma_rule): at 4× the paper's lr, σ² = 16·4e-5 and every gate
# α = s·a with s = 1/16 held in a buffer the sharded checkpoint must carry.
AUTO = ('model.init_config.sigma2=auto', 'model.init_config.lr=${optimizer.lr}', 'optimizer.lr=4e-3')
AUTO_SAVE_AT = 5


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.distributed)


@dataclass
class Run:
    """One finished training run and what it logged."""

    reparam: str
    save_folder: Path
    """Composer's save_folder (sharded ``ep0-ba*`` folders for two ranks)."""
    cwd: Path
    """Where it ran (the paper YAMLs' jsonl logger writes ``save_folder/metrics.jsonl``)."""
    run_name: str
    metrics: dict[str, dict[int, float]]
    """Logged metrics, {key: {step: value}}."""
    states: dict
    """The monitors' ``state_dict()`` at the end."""
    input_ids: torch.Tensor
    logits: torch.Tensor
    """fp32 logits of the trained model on ``input_ids``, eval mode."""
    raw: dict
    """Everything the driver collected."""

    @property
    def losses(self) -> list[float]:
        series = self.metrics['loss/train/total']
        return [series[s] for s in sorted(series)]


def job(reparam: str, work: Path, data: Path, world_size: int, *extra: str, name: str | None = None) -> dict:
    name = name or reparam
    if reparam in SWITCHED:
        reparam, *switch = SWITCHED[reparam]
        extra = (*switch, *extra)
    cwd = work / name
    ovr = overrides(data, cwd / 'checkpoints', f'{name}-{world_size}rank', world_size,
                    'callbacks.test_gloo_grad_average={}', *extra)
    return {'reparam': reparam, 'cwd': str(cwd), 'out': str(cwd / 'out'), 'overrides': ovr}


def as_run(j: dict, r: dict) -> Run:
    run_name = next(o.split('=', 1)[1] for o in j['overrides'] if o.startswith('variables.run_name='))
    return Run(j['reparam'], Path(j['cwd']) / 'checkpoints', Path(j['cwd']), run_name, r['metrics'], r['states'],
               r['input_ids'], r['logits'], r)


@pytest.fixture(scope='session')
def fsdp_runs(tiny_data, tmp_path_factory) -> dict[str, Run]:
    """Every paper method and ``reparam: multipliers``, 10 steps over two ranks (FSDP2 FULL_SHARD,
    activation checkpointing, sharded checkpoints every 5 steps), plus WeSaR with bf16 parameters
    (key ``wesar-bf16``), WeSaR with ``sigma2: auto`` (``wesar-auto``) and that run and the
    multipliers' resumed from their step-5 sharded checkpoints (``wesar-auto-resumed``,
    ``multipliers-resumed``), in one ``composer -n 2`` launch."""
    work = tmp_path_factory.mktemp('two-ranks')
    jobs = {r: job(r, work, tiny_data, 2) for r in REPARAMS}
    jobs['wesar-bf16'] = job('wesar', work, tiny_data, 2, BF16, name='wesar-bf16')
    jobs['wesar-auto'] = job('wesar', work, tiny_data, 2, *AUTO, name='wesar-auto')
    mid = work / 'wesar-auto' / 'checkpoints' / f'ep0-ba{AUTO_SAVE_AT}'
    jobs['wesar-auto-resumed'] = job('wesar', work, tiny_data, 2, *AUTO, f'load_path={mid}', name='wesar-auto-resumed')
    mid = work / 'multipliers' / 'checkpoints' / f'ep0-ba{AUTO_SAVE_AT}'
    jobs['multipliers-resumed'] = job('multipliers', work, tiny_data, 2, f'load_path={mid}', name='multipliers-resumed')
    run_train_jobs(list(jobs.values()), work)
    return {name: as_run(j, result(j)) for name, j in jobs.items()}


@pytest.fixture(scope='session')
def single_runs(tiny_data, tmp_path_factory) -> dict[str, Run]:
    """The same configs and global batch in one process (llm-foundry drops FSDP at world size 1),
    for every paper method, ``reparam: multipliers`` and ``wesar-auto``."""
    from llmfoundry.command_utils import train

    from tests.distributed.driver import collect
    work = tmp_path_factory.mktemp('one-process')
    runs, here = {}, os.getcwd()
    try:
        for name, j in [(r, job(r, work, tiny_data, 1)) for r in REPARAMS] + [
                ('wesar-auto', job('wesar', work, tiny_data, 1, *AUTO, name='wesar-auto'))]:
            Path(j['cwd']).mkdir(parents=True)
            os.chdir(j['cwd'])
            trainer = train(load(j['reparam'], j['overrides']))
            runs[name] = as_run(j, collect(trainer))
            trainer.close()
    finally:
        os.chdir(here)
    return runs
