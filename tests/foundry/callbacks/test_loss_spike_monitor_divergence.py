"""A run that diverges stops at once, says why, and keeps its last good checkpoint; or, opted in,
skips the non-finite step as if its batch had not been there."""

from __future__ import annotations

import json
import math

import pytest
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry.command_utils import train
from llmfoundry.registry import callbacks

from tests.foundry.callbacks.helpers import find, logged
from wesar_foundry.foundry.callbacks.loss_spike_monitor import LossSpikeMonitor, NonFiniteLossError


class PoisonLoss(Callback):
    """Makes the loss of one step NaN (and so every gradient of it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_loss(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) + 1 == self.step:
            state.loss['total'] = state.loss['total'] * float('nan')


class PoisonWeights(Callback):
    """Sets one weight to NaN after the optimizer step of one step (a divergence nothing else saw)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) == self.step:
            with torch.no_grad():
                state.model.model.lm_head.weight.view(-1)[0] = float('nan')


callbacks.register('test_poison_loss', func=PoisonLoss)
callbacks.register('test_poison_weights', func=PoisonWeights)

# Adam warming up to lr 1000: the tiny model's loss explodes from step 4 and is NaN from step 11.
DIVERGE = ('optimizer.lr=1000', 'scheduler.t_warmup=20ba', 'max_duration=40ba', 'save_interval=2ba',
           'save_num_checkpoints_to_keep=2')


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_diverging_run_stops_on_its_first_non_finite_step_naming_it(train_cfg, tmp_path):
    ck = tmp_path / 'ck'
    metrics = tmp_path / 'metrics.jsonl'
    cfg = train_cfg(*DIVERGE, f'save_folder={ck}', f'loggers={{jsonl: {{path: {metrics}}}}}',
                    'callbacks={update_ratio_monitor: {interval: 1}, loss_spike_monitor: {}}')
    with pytest.raises(NonFiniteLossError, match=r'non-finite loss or gradient at step (\d+); largest update ratios '
                                                 r'before it \(step \d+\): model\..*Training stopped before') as err:
        train(cfg)
    step = int(err.value.args[0].split('at step ')[1].split(';')[0])
    logged_rows = rows(metrics)
    losses = {r['step'] + 1: r['loss/train/total'] for r in logged_rows if 'loss/train/total' in r}
    # Every earlier step was finite and logged; the diverged one never reached the optimizer.
    assert step > 1 and sorted(losses) == list(range(1, step)) and all(math.isfinite(x) for x in losses.values())
    assert [r['loss_spike/nonfinite_step'] for r in logged_rows if 'loss_spike/nonfinite_step' in r] == [step]
    # Only finite checkpoints, the last two before the divergence, and `latest` on the newest.
    kept = sorted(int(p.name.split('-ba')[1].split('-')[0]) for p in ck.glob('ep*-ba*-rank0.pt'))
    last = (step - 1) // 2 * 2
    assert kept == [last - 2, last] and last >= 2
    for p in ck.glob('ep*-ba*-rank0.pt'):
        weights = [v for v in torch.load(p, weights_only=False)['state']['model'].values() if v.is_floating_point()]
        assert weights and all(torch.isfinite(v).all() for v in weights), p.name
    assert (ck / 'latest-rank0.pt').resolve().name == f'ep0-ba{last}-rank0.pt'


# Constant lr, so that the skipped step's advance of the schedule changes nothing.
SKIP_RUN = ('scheduler.t_warmup=0ba', 'scheduler.alpha_f=1.0', 'optimizer.lr=3e-3')
POISON = 4


@pytest.mark.slow
def test_skip_mode_drops_a_non_finite_step_as_if_its_batch_had_not_been_there(train_cfg, tmp_path):
    ck = tmp_path / 'ck'
    trainer = train(train_cfg(*SKIP_RUN, 'max_duration=8ba', f'save_folder={ck}', 'save_interval=3ba',
                              'save_num_checkpoints_to_keep=-1',
                              f'callbacks={{test_poison_loss: {{step: {POISON}}}, '
                              'loss_spike_monitor: {nonfinite: skip, warmup: 0, window: 2}}'))
    mon = find(trainer, LossSpikeMonitor)
    assert (mon.skipped, mon.nonfinite_steps, mon.detector.nonfinite) == (1, 1, 1)
    assert logged(trainer, 'loss_spike/nonfinite') == {POISON - 1: 1}
    assert logged(trainer, 'loss_spike/nonfinite_step') == {POISON - 1: POISON}
    losses = logged(trainer, 'loss/train/total')
    assert math.isnan(losses[POISON - 1]) and all(math.isfinite(losses[s]) for s in range(8) if s != POISON - 1)
    # The run without that batch: the step-3 checkpoint with the data position moved past batch 4.
    state = torch.load(ck / 'ep0-ba3-rank0.pt', weights_only=False)
    state['state']['dataset_state']['train']['sample_in_epoch'] += 8
    torch.save(state, tmp_path / 'without-batch-4.pt')
    reference = logged(train(train_cfg(*SKIP_RUN, 'max_duration=7ba', f'load_path={tmp_path / "without-batch-4.pt"}',
                                       f'run_name=ref-{tmp_path.name}')), 'loss/train/total')
    assert [reference[s] for s in range(3, 7)] == pytest.approx([losses[s] for s in range(4, 8)], rel=1e-5)


@pytest.mark.slow
def test_skip_mode_stops_after_max_skips_consecutive_non_finite_steps(train_cfg, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r'at step \d+\. Training stopped .*\(2 consecutive steps were skipped\)'):
        train(train_cfg('optimizer.lr=1000', 'scheduler.t_warmup=20ba', 'max_duration=20ba',
                        'callbacks={loss_spike_monitor: {nonfinite: skip, max_skips: 2, ratios: none}}'))


@pytest.mark.parametrize('key, value, allowed', [('nonfinite', 'ignore', 'allowed: stop, skip'),
                                                 ('max_skips', 0, 'must be an integer >= 1')])
def test_bad_divergence_options_name_the_key(key, value, allowed):
    with pytest.raises(ValueError, match=rf'loss_spike_monitor.{key}=.*{allowed}'):
        LossSpikeMonitor(**{key: value})


def test_non_finite_weights_are_never_checkpointed_and_older_checkpoints_stay(train_cfg, tmp_path):
    ck = tmp_path / 'ck'
    cfg = train_cfg('max_duration=8ba', f'save_folder={ck}', 'save_interval=2ba', 'save_num_checkpoints_to_keep=1',
                    'callbacks={test_poison_weights: {step: 4}, loss_spike_monitor: {ratios: none}}')
    with pytest.raises(NonFiniteLossError, match='non-finite weights at step 4: not saving a checkpoint'):
        train(cfg)
    assert sorted(p.name for p in ck.glob('ep*.pt')) == ['ep0-ba2-rank0.pt']  # kept, not rotated away
    assert (ck / 'latest-rank0.pt').resolve().name == 'ep0-ba2-rank0.pt'
