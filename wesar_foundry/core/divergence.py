"""What counts as a diverged step (core: imports torch only).

A step has diverged when its loss or any gradient element is not finite; a checkpoint must not be
written when any weight element is not finite. Each check reads every local element once: the
fp64 sum of a tensor is finite exactly when every element is (inf − inf is nan, and no sum of
finite fp32/bf16 values overflows fp64), which is one reduction per tensor instead of a
per-element mask. Under FSDP each rank checks its shard; the caller makes the verdict common.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from wesar_foundry.core.ratios import local_fp32


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every element of every tensor (this rank's shard of a DTensor) is finite."""
    sums = [torch.sum(local_fp32(t), dtype=torch.float64) for t in tensors if t is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))
