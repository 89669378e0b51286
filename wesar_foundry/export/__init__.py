"""Gated model or Composer checkpoint → stock Hugging Face checkpoint (imports transformers, models, files; Composer inside functions).

Every family exports the same way: a gated model (``wesar_llama``, ``wesar_hf``, ``wesar_mpt``) is
merged into the stock class of its architecture (``LlamaForCausalLM``; transformers' own class of
a ``wesar_hf`` model's model_type; llm-foundry's ``MPTForCausalLM``), which any inference library
loads. The modules, by concern:

- ``checkpoint``: a saved Composer checkpoint (monolithic file, sharded folder, a save folder's
  latest, on an object store) → the gated model, its training dtype and its tokenizer;
- ``merge``: the one merge (every ``ReparamMatrix`` → W̄ in fp32, cast once), optionally
  consuming the model so that an export needs about the model's size;
- ``stock_config``: the one stock-config writer; ``write``: dtype and shard-size options and the
  write-then-rename output folder;
- ``adapter``: what a family tells the export, and finding it; ``llama_adapter``, ``hf_adapter``
  and ``wesar_foundry.foundry.mpt.mpt_adapter`` (imported by name when needed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from wesar_foundry.export.adapter import adapter_of
from wesar_foundry.export.checkpoint import download_checkpoint, read_checkpoint, resolve_checkpoint
from wesar_foundry.export.merge import check_keys, empty_stock_model, merged_state_dict, merged_tensors
from wesar_foundry.export.write import (
    DTYPES, MAX_SHARD_SIZE, check_output_dir, parse_dtype, parse_shard_size, save_stock, training_dtype,
)
from wesar_foundry.files.remote import is_uri

__all__ = [
    'DTYPES', 'MAX_SHARD_SIZE', 'export_checkpoint', 'export_model', 'merged_state_dict', 'merged_tensors',
    'parse_dtype', 'parse_shard_size', 'to_stock', 'training_dtype',
]


@torch.no_grad()
def to_stock(model: PreTrainedModel, dtype: str | torch.dtype = torch.float32, tokenizer: Any = None) -> PreTrainedModel:
    """The stock model (in ``dtype``, eval mode) computing what the gated ``model`` computes in eval mode;
    ``model`` is kept. The tokenizer's special ids go into the stock config (``stock_config``)."""
    dtype = parse_dtype(dtype)
    adapter = adapter_of(model)
    config, cls = adapter.stock(model.config, dtype, tokenizer)
    stock = empty_stock_model(config, cls)
    # Cast tensor by tensor: no fp32 copy of the whole merged model.
    state = dict(merged_tensors(model, dtype, adapter=adapter))
    check_keys(stock, state)
    stock.load_state_dict(state, assign=True)
    return stock.eval()


def export_model(model: PreTrainedModel, out_dir: str | os.PathLike, tokenizer: Any = None,
                 dtype: str | torch.dtype = 'fp32', force: bool = False, protect: tuple = (), *,
                 release: bool = False, max_shard_size: int | str = MAX_SHARD_SIZE) -> Path:
    """Merge the gated ``model`` and write its stock checkpoint (+ tokenizer) to ``out_dir``.

    The merged tensors are handed to ``save_pretrained`` directly, with no stock module holding
    them. ``release``: free each of ``model``'s matrices once merged (``model`` is unusable
    afterwards), so that the export needs about the model's size, not twice it (``merge``).
    ``protect``: paths ``out_dir`` must not be or contain (the source checkpoint).
    """
    dtype = parse_dtype(dtype)
    max_shard_size = parse_shard_size(max_shard_size)
    check_output_dir(out_dir, force, protect)  # fail before any work
    adapter = adapter_of(model)
    config, cls = adapter.stock(model.config, dtype, tokenizer)
    # save_pretrained records the dtype of the model's parameters in config.json: meta, in `dtype`.
    stock = empty_stock_model(config, cls).to(dtype)
    state = dict(merged_tensors(model, dtype, release=release, adapter=adapter))
    check_keys(stock, state)
    return save_stock(stock, out_dir, tokenizer, force, protect, state_dict=state, max_shard_size=max_shard_size,
                      finish=adapter.finish_folder)


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | torch.dtype | None = None,
                      force: bool = False, max_shard_size: int | str = MAX_SHARD_SIZE) -> Path:
    """``wesar-foundry export``: a saved Composer checkpoint of any gated family → its stock checkpoint + tokenizer.

    ``checkpoint`` is a sharded checkpoint folder (``<save_folder>/ep<E>-ba<B>``, FSDP's
    ``state_dict_type: sharded``), a save folder (its ``latest-sharded-rank0`` checkpoint, else its
    ``latest-rank0.pt``), or a monolithic Composer checkpoint file, local or on an object store
    (s3://, gs://, oci://, ...: a remote save folder is followed through its
    ``latest-sharded-rank0.symlink`` object, and of a sharded checkpoint only its ``.metadata``
    and ``.distcp`` objects are downloaded, to a temporary folder). ``dtype`` defaults to the
    training dtype recorded in the checkpoint (fp32; bf16/fp16 for ``amp_*`` runs). Only the model
    weights and the HF config and tokenizer are read, in one CPU process; the checkpoint is not
    modified; the output appears only when complete.
    """
    dtype = parse_dtype(dtype) if dtype is not None else None
    parse_shard_size(max_shard_size)
    src = str(checkpoint)
    remote = is_uri(src)
    protect = () if remote else (src,)
    check_output_dir(out_dir, force, protect)  # fail before reading a large file
    with tempfile.TemporaryDirectory(prefix='wesar-export-') as work:
        if remote:
            local = download_checkpoint(src, Path(work))
        else:
            local = resolve_checkpoint(Path(src).expanduser())
            protect += (str(local),)
            check_output_dir(out_dir, force, protect)
        # About the downloaded copy, errors name the object the user gave.
        read = read_checkpoint(local, Path(work), shown=src if remote else None)
        return export_model(read.model, out_dir, tokenizer=read.tokenizer, dtype=dtype or training_dtype(read.precision),
                            force=force, protect=protect, release=True, max_shard_size=max_shard_size)
