"""The loss-spike rule on synthetic loss sequences."""

from __future__ import annotations

import math
import random

import pytest

from wesar_foundry.core.spikes import SpikeDetector, SpikeRule, detect_spikes

RULE = SpikeRule(window=50, k=5.0, warmup=50, min_rise=0.02)


def smooth(n: int = 2000, seed: int = 0, noise: float = 0.03) -> list[float]:
    """A pre-training-like curve: fast early fall, slow decay, Gaussian batch noise."""
    rng = random.Random(seed)
    return [3.0 + 7.0 * math.exp(-i / 60) + 1.0 / math.sqrt(1 + i / 100) + rng.gauss(0, noise) for i in range(n)]


@pytest.mark.parametrize('seed', range(5))
def test_smooth_noisy_curves_raise_no_spike(seed):
    assert detect_spikes(smooth(seed=seed), RULE) == []


def test_injected_spikes_are_flagged_at_their_first_step_and_counted_once():
    losses = smooth(seed=1)
    starts = [300, 800, 1500]
    for s in starts:
        for j, bump in enumerate([1.5, 1.0, 0.5]):  # a three-step spike decaying back
            losses[s + j] += bump
    assert detect_spikes(losses, RULE) == starts


def test_a_small_bump_within_noise_is_not_a_spike_but_a_clear_one_is():
    losses = smooth(seed=2)
    losses[500] += 0.05  # under 2 std of the noise
    losses[900] += 0.6
    assert detect_spikes(losses, RULE) == [900]


def test_non_finite_loss_is_a_spike():
    losses = smooth(seed=3)[:200]
    losses[150] = float('nan')
    assert detect_spikes(losses, RULE) == [150]


def test_nothing_is_flagged_during_warmup():
    losses = smooth(seed=4)[:200]
    losses[20] += 5.0
    assert detect_spikes(losses, RULE) == []


def test_a_lasting_level_shift_is_one_spike_then_the_new_level():
    losses = smooth(seed=5)[:600]
    for i in range(300, 600):
        losses[i] += 1.0
    det = SpikeDetector(RULE)
    flags = [det.update(x).flagged for x in losses]
    assert det.count == 1
    assert all(flags[300:350]) and not any(flags[360:])


def test_state_round_trips_and_continues_identically():
    losses = smooth(seed=6)[:400]
    losses[250] += 2.0
    a = SpikeDetector(RULE)
    for x in losses[:200]:
        a.update(x)
    b = SpikeDetector(RULE)
    b.load_state_dict(a.state_dict())
    assert [a.update(x).flagged for x in losses[200:]] == [b.update(x).flagged for x in losses[200:]]
    assert a.count == b.count == 1


@pytest.mark.parametrize('field, value', [('window', 1), ('k', -1.0), ('warmup', 2.5), ('min_rise', float('inf'))])
def test_bad_rule_values_name_the_key(field, value):
    with pytest.raises(ValueError, match=f'loss_spike_monitor.{field}='):
        SpikeRule(**{field: value}).check()


@pytest.mark.parametrize('at', [0, 3, 30])  # the first step, during warm-up, window still filling
def test_a_non_finite_loss_is_flagged_and_counted_at_any_step(at):
    det = SpikeDetector(RULE)
    verdicts = [det.update(x) for x in smooth(seed=7)[:at] + [float('nan'), float('inf')]]
    assert RULE.warmup > 30 and RULE.window > 30
    assert [v.flagged for v in verdicts[-2:]] == [True, True] and not any(v.flagged for v in verdicts[:-2])
    assert (det.count, det.nonfinite) == (1, 2)  # one spike of two non-finite steps
    assert len(det.history) == at  # none of them entered the window


def test_a_run_that_is_non_finite_from_the_start_counts_every_step():
    det = SpikeDetector(RULE)
    for _ in range(5):
        det.update(float('nan'))
    assert (det.count, det.nonfinite, det.steps) == (1, 5, 5)
    det2 = SpikeDetector(RULE)
    det2.load_state_dict(det.state_dict())
    assert det2.nonfinite == 5
