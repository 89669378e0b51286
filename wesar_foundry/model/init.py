"""Initialization of one module at a time: the body of the registered init functions.

Non-recursive on purpose: Composer's FSDP materializes a meta-device model one module at a
time (``to_empty``) and calls the init on each, so every module must initialize exactly what it
owns (a weight *and* its gain, norms, RoPE tables) and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

from wesar_foundry.init_targets import check_target, target_std
from wesar_foundry.reparam import ReparamMatrix


@torch.no_grad()
def init_module_(module: nn.Module, *, d_model: int, n_layers: int, target: str, sigma: float,
                 generator: torch.Generator | None = None) -> None:
    """Initialize the parameters and buffers ``module`` owns directly (not its children's)."""
    check_target(target)
    if isinstance(module, ReparamMatrix):
        fan_in = module.in_features if module.kind == 'linear' else None
        module.init_(target_std(module.role, target, d_model, n_layers, fan_in), sigma, generator)
    elif isinstance(module, LlamaRMSNorm):
        module.weight.fill_(1.0)
    elif isinstance(module, LlamaRotaryEmbedding):
        # A non-persistent buffer: after to_empty it holds garbage and no checkpoint restores it.
        inv_freq, _ = module.rope_init_fn(module.config, module.inv_freq.device)
        module.inv_freq.copy_(inv_freq)
        module.original_inv_freq = module.inv_freq
