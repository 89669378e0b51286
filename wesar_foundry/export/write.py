"""Writing an exported checkpoint: the dtype and shard-size options, the output folder's checks, and
``save_pretrained`` into a temporary sibling renamed into place when complete.

The merged tensors go to ``save_pretrained`` as its ``state_dict`` and are held by nothing else;
it writes ``max_shard_size`` shards and drops each shard's tensors once written (the pinned
safetensors 0.8 writes straight from the tensors' memory; older versions copied each shard to
bytes first, which the shard size bounds).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from wesar_foundry.files.atomic import staged_dir

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
# llm-foundry's HuggingFaceCheckpointer spells them out; accept both.
DTYPE_ALIASES = {'float32': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16'}
# Composer's Precision values → the dtype the model computed in: the default export dtype.
TRAINING_DTYPES = {'fp32': 'fp32', 'amp_bf16': 'bf16', 'amp_fp16': 'fp16', 'amp_fp8': 'bf16'}
# What llm-foundry's hf_checkpointer writes too; bounds the files (and, with old safetensors, the
# copy serialization made of each shard).
MAX_SHARD_SIZE = '1GB'


def parse_dtype(name: str | torch.dtype, key: str = '--dtype') -> torch.dtype:
    """``fp32``/``bf16``/``fp16`` (or ``float32``/``bfloat16``/``float16``, or a torch dtype)."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    short = DTYPE_ALIASES.get(name, name) if isinstance(name, str) else None
    if short not in DTYPES:
        raise ValueError(f'{key}={name!r} is not an export dtype; allowed: {", ".join(DTYPES)} '
                         f'(or {", ".join(DTYPE_ALIASES)})')
    return DTYPES[short]


def parse_shard_size(size: int | str, key: str = '--max-shard-size') -> int:
    """Bytes of a ``save_pretrained`` shard size: an int, or a number with KB/MB/GB/TB (powers of 1000, as
    Hugging Face counts them), e.g. ``500MB``."""
    value = size
    if isinstance(size, str):
        m = re.fullmatch(r'\s*(\d+(?:\.\d*)?)\s*([KMGT]B)?\s*', size, re.IGNORECASE)
        unit = 1000 ** ('KMGT'.index(m[2][0].upper()) + 1) if m and m[2] else 1
        value = int(float(m[1]) * unit) if m else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'{key}={size!r} is not a file size; use a number of bytes or e.g. 500MB, 5GB')
    return value


def training_dtype(precision: Any) -> torch.dtype:
    """The dtype a Composer ``precision`` (``fp32``, ``amp_bf16``, ...) computes in."""
    value = getattr(precision, 'value', precision)
    return DTYPES[TRAINING_DTYPES.get(value, 'fp32')]


def check_output_dir(out_dir: str | os.PathLike, force: bool = False, protect: tuple = ()) -> Path:
    """Refuse an existing ``out_dir`` unless ``force``; never one that is or holds a ``protect`` path."""
    out = Path(out_dir).expanduser().absolute()
    for p in protect:
        src = Path(p).expanduser().absolute()
        if out == src or out in src.parents:
            raise ValueError(f'output directory {out} is or contains the source checkpoint {src}; choose another')
    if out.exists() and not force:
        raise FileExistsError(f'output directory {out} already exists; pass --force (force=True) to replace it')
    return out


def save_stock(model: PreTrainedModel, out_dir: str | os.PathLike, tokenizer: Any = None, force: bool = False,
               protect: tuple = (), state_dict: dict[str, torch.Tensor] | None = None,
               max_shard_size: int | str = MAX_SHARD_SIZE, finish: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` (+ tokenizer) to ``out_dir`` via a temporary sibling renamed at the end.

    ``state_dict``: the weights to write instead of ``model``'s own (``model`` may then be on
    meta); ``save_pretrained`` empties it shard by shard. ``finish``: called on the written
    folder before the rename (an adapter's ``finish_folder``). Nothing appears at ``out_dir``
    unless the whole checkpoint was written; with ``force`` an existing ``out_dir`` is replaced
    only then.
    """
    out = check_output_dir(out_dir, force, protect)
    with staged_dir(out) as staging:
        model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if finish is not None:
            finish(staging)
        check_output_dir(out, force, protect)  # created meanwhile by someone else?
    return out
