"""What counts as diverged: any non-finite element, found by one fp64 sum per tensor."""

from __future__ import annotations

import pytest
import torch

from wesar_foundry.core.divergence import all_finite


def test_finite_tensors_are_finite():
    assert all_finite([torch.randn(4, 3), torch.randn(5), torch.zeros(0)])


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), float('-inf')])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_one_non_finite_element_anywhere_is_found(bad, dtype):
    t = torch.randn(64, 64).to(dtype)
    t[37, 11] = bad
    assert not all_finite([torch.randn(3), t])


def test_opposite_infinities_do_not_cancel():
    assert not all_finite([torch.tensor([float('inf'), float('-inf')])])


def test_the_largest_finite_values_do_not_overflow_the_sum():
    # Their fp32 (or bf16) sum would be inf: the fp64 one is not.
    for dtype in (torch.float32, torch.bfloat16):
        big = torch.full((1024,), torch.finfo(dtype).max, dtype=dtype)
        assert torch.isinf(big.float().sum())
        assert all_finite([big, -big])


def test_missing_gradients_and_no_tensors_count_as_finite():
    # A parameter that took no part in the step has grad None.
    assert all_finite([None, torch.ones(2)])
    assert all_finite([])
