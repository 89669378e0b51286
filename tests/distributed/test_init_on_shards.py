"""Every registered init on DTensor shards, called the way Composer's FSDP2 meta path calls it,
gives what a whole-module init gives for the same weights, and the targets' stds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.init_on_shards import CASES
from tests.distributed.launch import run_ranks

SCRIPT = Path(__file__).with_name('init_on_shards.py')


@pytest.fixture(scope='module')
def results(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp('init-on-shards')
    run_ranks(SCRIPT, [str(work / 'results.json')], work)
    return json.loads((work / 'results.json').read_text())


@pytest.mark.parametrize('case', CASES)
def test_every_parameter_was_a_dtensor_shard_and_comes_out_finite(results, case):
    r = results[case]
    assert r['keys_equal'] and r['finite']
    assert r['dtensor_params'] == r['params'] > 0


@pytest.mark.parametrize('case', CASES)
def test_gates_gains_singular_vectors_norms_and_rope_equal_a_whole_init_of_the_same_weights(results, case):
    # Weights are copied, so they match exactly; the rest is derived on each side independently.
    bad = {n: d for n, d in results[case]['rel_diff'].items() if not d <= 1e-6}
    assert not bad, bad


@pytest.mark.parametrize('case', CASES)
def test_sharded_weights_are_drawn_with_the_stored_std_of_their_target(results, case):
    for name, s in results[case]['stds'].items():
        tol = 4 / s['numel'] ** 0.5 + 0.02  # a few standard errors of a sample std
        assert s['std'] == pytest.approx(s['want'], rel=tol), name
