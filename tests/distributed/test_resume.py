"""Preemption on two ranks: a run SIGKILLed mid-way and started again with the same command
(autoresume from its sharded checkpoint) ends where an uninterrupted run ends."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.distributed.conftest import Run, as_run, job
from tests.distributed.launch import result, run_train_jobs

KILL_AT = 8  # the last checkpoint before it is at step 5


def jsonl_rows(run: Run) -> list[dict]:
    path = run.save_folder / 'metrics.jsonl'  # the paper YAMLs' jsonl path: the save folder
    return [json.loads(line) for line in path.read_text().splitlines()]


def step_keys(rows: list[dict]) -> Counter:
    return Counter((row['step'], key) for row in rows if 'step' in row for key in row if key != 'step')


@pytest.fixture(scope='module')
def preempted(tiny_data, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp('preempted')
    marker = work / 'preempted-once'
    j = job('wesar', work, tiny_data, 2, f'callbacks.test_preempt.step={KILL_AT}', f'callbacks.test_preempt.marker={marker}',
            name='preempted')
    run_train_jobs([j], work / 'launch', expect_failure=True)
    killed = {'marker': marker.exists(), 'result': (Path(j['out']) / 'result.pt').exists(),
              'folders': sorted(p.name for p in (Path(j['cwd']) / 'checkpoints').glob('ep*')),
              'rows': len((Path(j['cwd']) / 'checkpoints' / 'metrics.jsonl').read_text().splitlines())}
    run_train_jobs([j], work / 'launch')  # the same command again
    return {'killed': killed, 'resumed': as_run(j, result(j))}


def test_the_first_launch_is_killed_after_its_step_5_checkpoint(preempted):
    killed = preempted['killed']
    assert killed['marker'] and not killed['result']
    assert killed['folders'] == ['ep0-ba5']


def test_the_second_launch_resumes_from_step_5_instead_of_starting_over(preempted):
    assert sorted(preempted['resumed'].metrics['loss/train/total']) == [5, 6, 7, 8, 9]


def test_the_resumed_run_reaches_the_uninterrupted_losses(preempted, fsdp_runs):
    straight = jsonl_rows(fsdp_runs['wesar'])
    resumed = jsonl_rows(preempted['resumed'])
    loss = lambda rows: {r['step']: r['loss/train/total'] for r in rows if 'loss/train/total' in r}  # noqa: E731
    assert sorted(loss(resumed)) == list(range(10))
    assert [loss(resumed)[s] for s in range(10)] == pytest.approx([loss(straight)[s] for s in range(10)], rel=1e-5)
    assert preempted['resumed'].logits.sub(fsdp_runs['wesar'].logits).abs().max() < 1e-5


def test_metrics_jsonl_holds_every_step_exactly_once(preempted, fsdp_runs):
    resumed = step_keys(jsonl_rows(preempted['resumed']))
    assert max(resumed.values()) == 1, [k for k, n in resumed.items() if n > 1][:5]
    # The same (step, key) pairs as the run that was never interrupted, but for Composer's
    # runtime_estimator, which waits a few batches after every start before it estimates.
    straight = step_keys(jsonl_rows(fsdp_runs['wesar']))
    assert {k for k in resumed if k[1] != 'time/remaining_estimate'} == {k for k in straight if k[1] != 'time/remaining_estimate'}
    assert preempted['killed']['rows'] > 0


def test_both_monitors_keep_their_state_through_the_sharded_checkpoint(preempted, fsdp_runs):
    resumed, straight = preempted['resumed'].states, fsdp_runs['wesar'].states
    spikes = [json.loads(s['LossSpikeMonitor']['state']) for s in (resumed, straight)]
    assert spikes[0]['detector']['steps'] == spikes[1]['detector']['steps'] == 10  # not 5: the window survived
    assert spikes[0]['detector']['history'] == pytest.approx(spikes[1]['detector']['history'], rel=1e-5)
    ratios = [json.loads(s['UpdateRatioMonitor']['history']) for s in (resumed, straight)]
    assert [m['step'] for m in ratios[0]] == [m['step'] for m in ratios[1]] == [4, 6, 8, 10]  # 4 from before the kill
    for a, b in zip(*ratios):
        assert a['metrics'] == pytest.approx(b['metrics'], rel=1e-4, nan_ok=True)
