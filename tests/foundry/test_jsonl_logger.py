"""The ``jsonl`` logger: strict JSON for any value, and a per-rank path that says which rank."""

from __future__ import annotations

import json
import math

import pytest
import torch

from wesar_foundry.commands.plot import read_metrics
from wesar_foundry.foundry.jsonl_logger import JSONLLogger, _jsonable


def test_non_finite_values_are_written_as_strict_json_and_read_back_as_floats(tmp_path):
    # Real runs through the logger are in tests/commands/test_plot.py; this is the one value JSON cannot hold.
    line = json.dumps({'step': 1, 'loss/train/total': _jsonable(float('nan')), 'x': _jsonable(torch.tensor([2.0]))})
    json.loads(line, parse_constant=lambda c: pytest.fail(f'non-standard JSON constant {c}'))
    path = tmp_path / 'm.jsonl'
    path.write_text(line + '\n')
    run = read_metrics(path)
    assert math.isnan(run.series['loss/train/total'][0][1]) and run.series['x'] == [(1, 2.0)]


def test_all_ranks_needs_a_rank_placeholder():
    with pytest.raises(ValueError, match=r'loggers.jsonl.path=.*must contain \{rank\}'):
        JSONLLogger(path='m.jsonl', all_ranks=True)
