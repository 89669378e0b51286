"""``WeSaRLlamaForCausalLM``: transformers' Llama with every matrix reparameterized.

The model is built as transformers builds a Llama (with the paper's two-matrix GeLU MLP in place of
Llama's gated one unless ``mlp_type: swiglu``), then ``placement.place_matrices`` replaces every
``nn.Linear``/``nn.Embedding`` by the reparameterized matrix of its role (``core.roles.LLAMA_ROLES``).
Module tree and parameter names are Llama's (``model.layers.3.self_attn.q_proj.weight``), plus each
method's gains (``...q_proj.alpha`` for WeSaR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from wesar_foundry.core.roles import LLAMA_ROLES
from wesar_foundry.models.llama_config import WeSaRLlamaConfig
from wesar_foundry.models.placement import Reparameterization, place_matrices
from wesar_foundry.reparam import ForwardClock, ReparamMatrix, SigmaReparamMatrix


class ReparamModelMixin:
    """What every model with reparameterized matrices shares, mixed into a transformers
    ``PreTrainedModel`` subclass: the σReparam clock ticked once per training forward, no HF
    weight draws for the matrices, and the list of reparameterized matrices."""

    def attach_forward_clock(self) -> None:
        """Give every σReparam matrix the model's clock (call after placing the matrices)."""
        # σReparam steps its power iteration once per tick: ticked in forward, outside the decoder
        # layers that activation checkpointing recomputes.
        self.forward_clock = ForwardClock([m for m in self.modules() if isinstance(m, SigmaReparamMatrix)])

    def forward(self, *args, **kwargs):
        if self.training:
            self.forward_clock.advance()
        return super().forward(*args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        # transformers calls this for weights missing from a checkpoint; ours are drawn by the
        # registered init function, which the Composer wrapper applies after construction.
        # The nn.Linear/nn.Embedding that transformers builds are replaced right away: skip drawing them.
        if not isinstance(module, (ReparamMatrix, nn.Linear, nn.Embedding)):
            super()._init_weights(module)

    def reparam_modules(self) -> dict[str, ReparamMatrix]:
        """Every reparameterized matrix by its qualified name."""
        return {name: m for name, m in self.named_modules() if isinstance(m, ReparamMatrix)}


class GeLUMLP(nn.Module):
    """The paper's MLP: down(GeLU(up x)), two matrices and an exact (erf) GeLU."""

    def __init__(self, up_proj: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.up_proj = up_proj
        self.down_proj = down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class WeSaRLlamaForCausalLM(ReparamModelMixin, LlamaForCausalLM):
    """Llama with reparameterized matrices. Initialization is done by a registered init function
    (see ``wesar_foundry.models.init``), called by the Composer wrapper or per module under FSDP."""

    config_class = WeSaRLlamaConfig

    def __init__(self, config: WeSaRLlamaConfig):
        super().__init__(config)
        if config.mlp_type == 'gelu':
            # Llama's own up and down layers (hidden_act gelu), without its gate.
            for layer in self.model.layers:
                layer.mlp = GeLUMLP(layer.mlp.up_proj, layer.mlp.down_proj)
        how = Reparameterization(reparam=config.reparam, init_target=config.init_target, d_model=config.hidden_size,
                                 n_layers=config.num_hidden_layers, gamma_init=config.sigma_reparam_gamma_init,
                                 gate_scale=config.sigma_choice['gate_scale'], multipliers=config.multipliers)
        place_matrices(self, how, LLAMA_ROLES, model_name='wesar_llama')
        self.attach_forward_clock()


AutoConfig.register(WeSaRLlamaConfig.model_type, WeSaRLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(WeSaRLlamaConfig, WeSaRLlamaForCausalLM, exist_ok=True)
