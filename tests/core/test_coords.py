"""The coordinate check's arithmetic: power-law slopes, the drift rule, the per-role RMS."""

from __future__ import annotations

import math

import pytest

from wesar_foundry.core.coords import RULE, Drift, classify, drifts, log_slope, rms, role_means

WIDTHS = [64, 128, 256, 512]


@pytest.mark.parametrize('power', [-1.0, -0.5, 0.0, 0.25, 0.5, 2.0])
def test_the_slope_of_an_exact_power_law_is_its_exponent(power):
    assert log_slope(WIDTHS, [3.7 * w ** power for w in WIDTHS]) == pytest.approx(power, abs=1e-12)


def test_the_slope_is_the_least_squares_fit_not_the_end_points():
    # ln y = 0, 0, 0, ln 16 at ln w = 0, 1, 2, 3 (×ln 2): the end points alone would give 4/3.
    assert log_slope([1, 2, 4, 8], [1, 1, 1, 16]) == pytest.approx(1.2)


def test_a_value_that_is_not_finite_and_positive_leaves_no_slope():
    for bad in (0.0, -1.0, math.nan, math.inf):
        assert math.isnan(log_slope(WIDTHS, [1.0, 2.0, bad, 4.0]))


def test_fewer_than_two_distinct_widths_or_unequal_lengths_have_no_slope_at_all():
    with pytest.raises(ValueError, match='two distinct positive x'):
        log_slope([64, 64], [1.0, 2.0])
    with pytest.raises(ValueError, match='two distinct positive x'):
        log_slope([0, 64], [1.0, 2.0])
    with pytest.raises(ValueError, match='3 x values for 2 y values'):
        log_slope([1, 2, 4], [1.0, 2.0])


def test_a_role_drifts_only_when_the_slope_magnitude_exceeds_the_tolerance():
    assert classify(0.25, 0.25) == 'flat'
    assert classify(-0.25, 0.25) == 'flat'
    assert classify(0.2501, 0.25) == 'drifts'
    assert classify(-0.5, 0.25) == 'drifts'
    assert classify(math.nan, 0.25) == 'no fit'
    with pytest.raises(ValueError, match='tol=0 must be > 0'):
        classify(0.1, 0)


def test_drifts_fits_each_role_over_its_own_widths_and_flags_the_drifting_and_the_unfitted():
    values = {'q': {w: 0.1 for w in WIDTHS},                       # flat
              'o': {w: 0.01 * w ** 0.5 for w in WIDTHS},           # grows as √d
              'head': {w: 5.0 / w for w in WIDTHS},                # shrinks as 1/d
              'emb': {64: 0.1, 128: 0.0, 256: 0.1, 512: 0.1}}      # a zero: no fit
    out = drifts(values, tol=0.25)
    assert out['q'] == Drift('q', pytest.approx(0.0, abs=1e-12), 'flat')
    assert (out['o'].status, round(out['o'].slope, 9)) == ('drifts', 0.5)
    assert (out['head'].status, round(out['head'].slope, 9)) == ('drifts', -1.0)
    assert out['emb'].status == 'no fit' and math.isnan(out['emb'].slope)
    assert [r for r, d in out.items() if d.flagged] == ['o', 'head', 'emb']


def test_the_rule_states_the_fit_the_threshold_and_what_cannot_be_fitted():
    assert 'ln(value)' in RULE and 'ln(width)' in RULE and '|slope| > tol' in RULE and 'no fit' in RULE


def test_rms_and_the_mean_over_the_matrices_of_each_role():
    assert rms(4 * 9.0, 4) == 3.0
    assert math.isnan(rms(0.0, 0))
    roles = {'l0.q': 'q', 'l1.q': 'q', 'l0.o': 'o'}
    assert role_means({'l0.q': 1.0, 'l1.q': 3.0, 'l0.o': 0.5}, roles) == {'q': 2.0, 'o': 0.5}
