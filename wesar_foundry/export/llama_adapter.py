"""``wesar_llama`` → transformers' stock ``LlamaForCausalLM`` (``model_type: llama``).

The module tree is Llama's, so every merged matrix keeps its name, except in the paper's GeLU MLP.

**The paper's GeLU MLP in Llama's gated MLP.** Stock Llama computes
``down(act(gate_proj x) ⊙ up_proj x)``. The paper's two-matrix MLP ``down(GeLU(up x))`` is expressed
exactly with ``hidden_act: gelu`` (transformers' exact erf GeLU), ``mlp_bias: true``, our up
projection as Llama's ``gate_proj`` (bias 0), Llama's ``up_proj`` with weight 0 and bias 1 (so it
outputs the constant 1), and ``down_proj`` with bias 0. ``attention_bias`` stays false.

Inference cost of that form: the zero ``up_proj`` is a third (4d × d) matrix that stock Llama still
multiplies, plus three bias vectors. Per layer that is 16d² weights instead of 12d² (MLP 12d²
instead of 8d²): about +33% non-embedding weights, memory and matmul FLOPs per token (+50% in the
MLP), for outputs identical to the two-matrix model's. SwiGLU models (``mlp_type: swiglu``) map one
to one onto Llama's MLP and export at no extra cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from transformers import LlamaForCausalLM, PretrainedConfig

from wesar_foundry.export.adapter import Adapter
from wesar_foundry.export.stock_config import stock_config
from wesar_foundry.models.llama import WeSaRLlamaForCausalLM
from wesar_foundry.models.llama_config import WeSaRLlamaConfig


class LlamaAdapter(Adapter):
    """``wesar_llama`` → ``LlamaForCausalLM``, the GeLU MLP in gated form (module doc)."""

    family = WeSaRLlamaConfig.model_type

    def is_gated(self, model: Any) -> bool:
        return isinstance(model, WeSaRLlamaForCausalLM)

    def gated_config(self, content: dict[str, Any]) -> WeSaRLlamaConfig:
        return WeSaRLlamaConfig.from_dict(content)

    def build(self, config: WeSaRLlamaConfig) -> WeSaRLlamaForCausalLM:
        return WeSaRLlamaForCausalLM(config)

    def stock(self, config: WeSaRLlamaConfig, dtype: torch.dtype,
              tokenizer: Any = None) -> tuple[PretrainedConfig, type[LlamaForCausalLM]]:
        gelu = config.mlp_type == 'gelu'
        fields = {'hidden_act': 'gelu' if gelu else 'silu',
                  'mlp_bias': gelu,  # the constant-1 up_proj needs its bias; the zero biases are exact no-ops
                  'attention_bias': False}
        return stock_config(config, LlamaForCausalLM, dtype, tokenizer, **fields), LlamaForCausalLM

    def tensors(self, config: WeSaRLlamaConfig, name: str, weight: torch.Tensor,
                bias: torch.Tensor | None) -> Iterator[tuple[str, torch.Tensor]]:
        if config.mlp_type != 'gelu':
            yield from super().tensors(config, name, weight, bias)
        elif name.endswith('.mlp.up_proj'):
            # Our up projection becomes Llama's gate_proj (the one the activation is applied to);
            # Llama's up_proj becomes the constant 1: zero weight, bias 1.
            prefix = name[: -len('up_proj')]
            yield prefix + 'gate_proj.weight', weight
            yield prefix + 'gate_proj.bias', weight.new_zeros(weight.shape[0])
            yield prefix + 'up_proj.weight', torch.zeros_like(weight)
            yield prefix + 'up_proj.bias', weight.new_ones(weight.shape[0])
        elif name.endswith('.mlp.down_proj'):
            yield name + '.weight', weight
            yield name + '.bias', weight.new_zeros(weight.shape[0])
        else:
            yield from super().tensors(config, name, weight, bias)


ADAPTER = LlamaAdapter()
