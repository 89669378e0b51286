"""``WeSaRLlamaForCausalLM``: transformers' Llama with every matrix reparameterized.

The module tree and parameter names are Llama's (``model.layers.3.self_attn.q_proj.weight``), plus
each method's gains (``...q_proj.alpha`` for WeSaR). The paper's MLP is two matrices with an exact
GeLU; ``mlp_type: swiglu`` gives Llama's gated MLP.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from wesar_foundry.init_targets import stored_embedding_std
from wesar_foundry.model.config import WeSaRLlamaConfig
from wesar_foundry.reparam import (
    ForwardClock, PlainMatrix, ReparamMatrix, ResidualScaledMatrix, SigmaReparamMatrix, WeSaRMatrix, WeightNormMatrix,
)


@functools.cache
def with_bias(cls: type[ReparamMatrix]) -> type[ReparamMatrix]:
    """``cls`` plus a bias added after the reparameterized product: y = x W̄ᵀ + b.

    The gain scales W, not W x + b, so the merge keeps b as it is (stock layers with a bias: Qwen2's
    q/k/v, GPT-NeoX's every linear layer). The bias is stored in the weight's dtype and is
    initialized to 0 by the init functions, as transformers does.
    """
    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        self.bias = nn.Parameter(torch.zeros(self.weight.shape[0], device=self.weight.device, dtype=self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cls.forward(self, x) + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return cls.extra_repr(self) + ', bias=True'

    name = f'Biased{cls.__name__}'
    return type(name, (cls,), {'__init__': __init__, 'forward': forward, 'extra_repr': extra_repr,
                               '__module__': __name__, '__qualname__': name, '__doc__': with_bias.__doc__})


def new_matrix(reparam: str, rows: int, cols: int, role: str, kind: str = 'linear', *, init_target: str, d_model: int,
               n_layers: int, gamma_init: str = 'one', gate_scale: float = 1.0, bias: bool = False, device=None,
               dtype=None) -> ReparamMatrix:
    """The module ``reparam`` asks for, for one matrix of ``role`` (in a model of width ``d_model``,
    depth ``n_layers``, init target ``init_target``); ``gate_scale``: WeSaR's s in α = s·a
    (``sigma_rule``); ``bias``: a linear map with a bias."""
    kwargs: dict = {'device': device, 'dtype': dtype}
    if reparam == 'wesar':
        cls, kwargs['gate_scale'] = WeSaRMatrix, gate_scale
    elif reparam == 'weight_norm':
        cls = WeightNormMatrix
    elif reparam == 'sigma_reparam':
        cls, kwargs['gamma_init'] = SigmaReparamMatrix, gamma_init
    elif role == 'emb':
        # "Spike No More": a plain embedding's output is scaled to std 1 by a constant.
        cls, kwargs['scale'] = PlainMatrix, 1.0 / stored_embedding_std(init_target, d_model)
    elif reparam == 'residual_scaling':
        cls, kwargs['n_layers'] = ResidualScaledMatrix, n_layers
    else:
        cls = PlainMatrix
    if bias:
        if kind != 'linear':
            raise ValueError(f'a bias is for linear maps only, not {kind} (role {role})')
        cls = with_bias(cls)
    return cls(rows, cols, role, kind, **kwargs)


def make_matrix(config: WeSaRLlamaConfig, rows: int, cols: int, role: str, kind: str = 'linear') -> ReparamMatrix:
    """The module ``config.reparam`` asks for, for one matrix of ``role``."""
    return new_matrix(config.reparam, rows, cols, role, kind, init_target=config.init_target, d_model=config.hidden_size,
                      n_layers=config.num_hidden_layers, gamma_init=config.sigma_reparam_gamma_init,
                      gate_scale=config.sigma_choice['gate_scale'])


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


class WeSaRLlamaMLP(nn.Module):
    """gelu: down(GeLU(up x)), the paper's two matrices; swiglu: down(SiLU(gate x) ⊙ up x)."""

    def __init__(self, config: WeSaRLlamaConfig):
        super().__init__()
        d, h = config.hidden_size, config.intermediate_size
        self.mlp_type = config.mlp_type
        if self.mlp_type == 'swiglu':
            self.gate_proj = make_matrix(config, h, d, 'gate')
        self.up_proj = make_matrix(config, h, d, 'up')
        self.down_proj = make_matrix(config, d, h, 'down')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp_type == 'swiglu':
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x)))  # exact (erf) GeLU, as the paper


class WeSaRLlamaForCausalLM(ReparamModelMixin, LlamaForCausalLM):
    """Llama with reparameterized matrices. Initialization is done by a registered init function
    (see ``wesar_foundry.model.init``), called by the Composer wrapper or per module under FSDP."""

    config_class = WeSaRLlamaConfig

    def __init__(self, config: WeSaRLlamaConfig):
        super().__init__(config)
        d, v = config.hidden_size, config.vocab_size
        self.model.embed_tokens = make_matrix(config, v, d, 'emb', kind='embedding')
        for layer in self.model.layers:
            attn = layer.self_attn
            q_rows = config.num_attention_heads * attn.head_dim
            kv_rows = config.num_key_value_heads * attn.head_dim
            attn.q_proj = make_matrix(config, q_rows, d, 'q')
            attn.k_proj = make_matrix(config, kv_rows, d, 'k')
            attn.v_proj = make_matrix(config, kv_rows, d, 'v')
            attn.o_proj = make_matrix(config, d, q_rows, 'o')
            layer.mlp = WeSaRLlamaMLP(config)
        self.lm_head = make_matrix(config, v, d, 'head')
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.attach_forward_clock()


AutoConfig.register(WeSaRLlamaConfig.model_type, WeSaRLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(WeSaRLlamaConfig, WeSaRLlamaForCausalLM, exist_ok=True)
