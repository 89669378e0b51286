"""The one merge: a gated model of any family → the state dict of its stock class.

After training, every reparameterization is folded into its matrix, so the checkpoint has the base
architecture and any inference library loads it:

- WeSaR: each gate folds into its matrix, W ← α·W (the embedding gate included);
- the plain embedding's "Spike No More" output scale folds into the embedding table;
- Weight Normalization and σReparam fold their current W̄ (σReparam with its *stored* singular
  vectors, exactly what the model's eval-mode forward uses);
- Residual Scaling folds its constant 1/√(2N) into W_o and W_d;
- learnable multipliers fold α and their row and column vectors, W ← α·diag(r̂)·W·diag(ĉ).

Each ``ReparamMatrix`` becomes W̄ (s ⊙ W; s ⊙ W ⊙ c with column multipliers), computed in fp32
from the fp32 masters (``ReparamMatrix.merged_weight``) and cast once to the export dtype; a fused
matrix (qkv, gate_up) is merged whole, before the adapter splits or reorders its rows, so its row
layout does not matter, per-row gains included. A bias is copied as it is (the gain
scales W, not W x + b), and so is everything else (norms). The family's adapter names the stock
keys (Llama's GeLU MLP becomes three matrices: ``llama_adapter``).

**Memory** (``release``). Let S be the model's fp32 size. The merge consumes the model one matrix
at a time: W̄ = s ⊙ W is written over W (the same fp32 product, so no second matrix), cast once,
and the module freed before the next one, so sources plus results stay within S, plus what the
adapter adds (the GeLU form's zero ``up_proj`` weights: up to a third of the decoder's weights).
A monolithic checkpoint is memory-mapped copy-on-write (``checkpoint``), so the merge turns the
model's mapped pages into the results' in place. ``bench/export_memory.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.integrations.accelerate import init_empty_weights

from wesar_foundry.export.adapter import Adapter, adapter_of
from wesar_foundry.reparam import MultiplierMatrix, ReparamMatrix


@torch.no_grad()
def merged_tensors(model: PreTrainedModel, dtype: torch.dtype = torch.float32, *, release: bool = False,
                   adapter: Adapter | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The stock state dict of the gated ``model`` as ``(key, tensor)`` pairs in ``dtype``, one module at a time.

    With ``release`` the model is consumed (module doc): each fp32 matrix is merged in its own
    storage and its module then freed (moved to meta); ``model`` is unusable afterwards.
    ``adapter``: the family's (default: found from ``model``). σReparam uses the stored singular
    vectors: this runs under no_grad, so no power-iteration step is taken.
    """
    adapter = adapter or adapter_of(model)
    reparams = model.reparam_modules()
    owned = {f'{name}.{key}' for name, m in reparams.items() for key in m.state_dict()}
    rest = {k: v for k, v in model.state_dict().items() if k not in owned}
    for name, module in reparams.items():
        w = merged_over_weight(module) if release and module.weight.dtype == torch.float32 else module.merged_weight()
        w = w.to(dtype)  # the single cast (a no-op for fp32)
        bias = getattr(module, 'bias', None)
        bias = None if bias is None else bias.detach().to(dtype, copy=True)
        if release:
            module.to('meta')  # new meta tensors replace the module's own: its storage is freed
        yield from adapter.tensors(model.config, name, w, bias)
    for key, value in rest.items():
        yield key, value.detach().to(dtype if value.is_floating_point() else value.dtype, copy=True)


@torch.no_grad()
def merged_over_weight(module: ReparamMatrix) -> torch.Tensor:
    """``module.merged_weight()`` written over its fp32 weight: the same fp32 products in the same
    order (the gains first: they may depend on W), without a second matrix in memory."""
    w = module.weight.detach()
    if isinstance(module, MultiplierMatrix):
        # W̄ = α·r̂ ⊙ W ⊙ ĉ is not one gain() times W (gain() refuses a column vector).
        row, col = module.row_gain().float(), module.col_gain()
        w.mul_(row)
        return w if col is None else w.mul_(col.float())
    return w.mul_(module.gain().float())


def merged_state_dict(model: PreTrainedModel, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The stock state dict of the gated ``model`` in ``dtype`` (every W̄ merged in fp32, cast once); ``model`` is kept."""
    return dict(merged_tensors(model, dtype))


def empty_stock_model(config: PretrainedConfig, cls: type[PreTrainedModel]) -> PreTrainedModel:
    """``cls(config)`` with its parameters on meta: the merged tensors are assigned or saved as they are."""
    with init_empty_weights():
        return cls(config)


def check_keys(stock: PreTrainedModel, state: dict[str, torch.Tensor]) -> None:
    """Raise a RuntimeError if ``state`` is not exactly ``stock``'s state dict (an adapter's mistake)."""
    expected = set(stock.state_dict())
    if set(state) != expected:
        raise RuntimeError(f'merged state dict does not match {type(stock).__name__}: missing '
                           f'{sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}')
