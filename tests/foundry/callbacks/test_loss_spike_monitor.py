"""``loss_spike_monitor`` in real tiny runs: names the matrix that jumped, stops on request, resumes."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
from llmfoundry.command_utils import train

from tests.foundry.callbacks.helpers import find, logged
from wesar_foundry.core.spikes import SpikeRule
from wesar_foundry.foundry.callbacks.loss_spike_monitor import LossSpikeError, LossSpikeMonitor

TARGET = 'model.lm_head'
JUMP_STEP = 10
# The target matrix gets its own optimizer param group, so only its lr jumps (×1000 for one step).
# The head, because in a 2-layer pre-LN model a jump in a block matrix is absorbed by the final norm
# (loss +0.3–0.6, within this tiny run's batch noise) while the head's sends the loss to ~200.
SPIKE_RUN = (
    'scheduler.t_warmup=2ba',
    r"optimizer.param_groups=[{param_str_match: '\.(alpha|g|gamma|row_mult|col_mult)$', weight_decay: 0.0}, "
    r"{param_str_match: 'lm_head\.weight$'}]",
)
# Tight enough for a 14-step run, loose enough for its batch-to-batch noise (bumps of ~5% occur).
MONITOR = '{window: 6, warmup: 6, k: 6.0, min_rise: 0.15, top_k: 3'


def callbacks(monitor: str = MONITOR + '}', extra: str = '') -> str:
    return (f"callbacks={{test_lr_jump: {{match: 'lm_head\\.weight$', step: {JUMP_STEP}, "
            f"factor: 1000.0}}, loss_spike_monitor: {monitor}{extra}}}")


@pytest.mark.slow
def test_a_one_step_lr_jump_of_one_matrix_is_flagged_and_that_matrix_named(train_cfg):
    trainer = train(train_cfg('max_duration=14ba', *SPIKE_RUN, callbacks()))
    mon = find(trainer, LossSpikeMonitor)
    assert mon.spikes, 'the jump made no spike'
    first = mon.spikes[0]
    # The loss of step t is computed with W_{t-1}: the jumped update shows in the next step's loss.
    assert first['step'] == JUMP_STEP + 1
    assert first['loss'] > first['threshold'] > first['window_mean']
    assert first['ratios_before']['step'] == JUMP_STEP
    name, value = first['ratios_before']['top'][0]
    assert name == TARGET
    assert value > 10 * first['ratios_before']['top'][1][1]
    assert first['ratios_at']['step'] == JUMP_STEP + 1
    count = logged(trainer, 'loss_spike/count')
    assert count[JUMP_STEP] == 0 and count[JUMP_STEP + 1] == 1
    assert logged(trainer, 'loss_spike/loss') == {JUMP_STEP + 1: pytest.approx(first['loss'])}


def test_action_stop_raises_a_clear_error_at_the_spike(train_cfg):
    with pytest.raises(LossSpikeError, match=rf'step {JUMP_STEP + 1}: loss .* > threshold .*{TARGET}.*action=stop'):
        train(train_cfg('max_duration=14ba', *SPIKE_RUN, callbacks(MONITOR + ", action: stop}")))


@pytest.mark.slow
def test_a_smooth_run_has_no_spike(train_cfg):
    trainer = train(train_cfg('max_duration=14ba', 'callbacks={loss_spike_monitor: ' + MONITOR + ', ratios: none}}'))
    assert find(trainer, LossSpikeMonitor).spikes == []
    assert set(logged(trainer, 'loss_spike/count').values()) == {0}


@pytest.mark.slow
def test_state_survives_checkpoint_and_resume(train_cfg, tmp_path):
    folder = tmp_path / 'ckpt'
    full = train(train_cfg('max_duration=16ba', *SPIKE_RUN, callbacks(), f'save_folder={folder}',
                           'save_interval=14ba'))
    reference = find(full, LossSpikeMonitor)
    assert [s['step'] for s in reference.spikes][:1] == [JUMP_STEP + 1]

    resumed = train(train_cfg('max_duration=16ba', *SPIKE_RUN, callbacks(),
                              f'load_path={folder}/ep0-ba14-rank0.pt'))
    mon = find(resumed, LossSpikeMonitor)
    # The spike before the checkpoint is still on record, the count continues from it, and the
    # window carried over, so the resumed run ends in the same state as the uninterrupted one.
    assert mon.spikes[0]['step'] == JUMP_STEP + 1
    assert min(logged(resumed, 'loss_spike/count')) == 15
    assert logged(resumed, 'loss_spike/count')[15] >= 1
    got, want = mon.detector.state_dict(), reference.detector.state_dict()
    assert got['steps'] == want['steps'] == 16 and got['count'] == want['count']
    assert got['history'] == pytest.approx(want['history'], rel=1e-5)


def test_the_rules_keys_are_the_spike_rules_fields_with_its_defaults():
    rule = fields(SpikeRule)
    params = inspect.signature(LossSpikeMonitor).parameters
    assert rule and [f.name for f in rule] == list(params)[:len(rule)]
    assert all(params[f.name].default == f.default for f in rule)
    mon = LossSpikeMonitor(window=7, k=2.5)
    assert (mon.detector.rule.window, mon.detector.rule.k) == (7, 2.5)


def test_an_unquoted_yaml_off_turns_the_ratios_off():
    assert LossSpikeMonitor(ratios=False).config.ratios == 'none'


@pytest.mark.parametrize('kwargs, match', [
    ({'action': 'halt'}, r"action='halt'; allowed: log, stop"),
    ({'ratios': 'always'}, r"ratios='always'; allowed: auto, monitor, none"),
    ({'window': 1}, r'window=1 must be an integer >= 2'),
    ({'treshold': 3}, r'unknown option\(s\) treshold'),
])
def test_bad_options_fail_at_construction_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossSpikeMonitor(**kwargs)


def test_a_loss_key_the_model_never_logs_is_refused_before_training(train_cfg):
    with pytest.raises(ValueError, match=r"loss_key='loss/train/totl' is never logged by this model; allowed: "
                                         r'loss/train/total, loss/train/ce, loss/train/z_loss'):
        train(train_cfg("callbacks={loss_spike_monitor: {loss_key: 'loss/train/totl'}}", 'max_duration=2ba'))
