"""Initialization of one module at a time: the body of the registered init functions.

Non-recursive on purpose: Composer's FSDP materializes a meta-device model one module at a
time (``to_empty``) and calls the init on each, so every module must initialize exactly what it
owns (a weight *and* its gain and bias, norms, RoPE tables) and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from wesar_foundry.core.init_targets import check_target, target_std
from wesar_foundry.reparam import ReparamMatrix


def _is_rms_norm(module: nn.Module) -> bool:
    # Llama, Mistral, Qwen2/3 and Phi-3 each have their own RMSNorm class, all computing w·x̂ with w
    # initialized to 1 and an eps named variance_epsilon (Gemma's (1+w)·x̂ names it eps: not matched).
    return isinstance(module, LlamaRMSNorm) or (
        type(module).__name__.endswith('RMSNorm') and hasattr(module, 'variance_epsilon')
        and isinstance(getattr(module, 'weight', None), nn.Parameter))


def _is_rotary(module: nn.Module) -> bool:
    return hasattr(module, 'rope_init_fn') and isinstance(getattr(module, 'inv_freq', None), torch.Tensor)


def claims(module: nn.Module) -> bool:
    """Whether ``init_module_`` initializes ``module``'s own parameters and buffers."""
    return isinstance(module, (ReparamMatrix, nn.LayerNorm)) or _is_rms_norm(module) or _is_rotary(module)


@torch.no_grad()
def init_module_(module: nn.Module, *, d_model: int, n_layers: int, target: str, sigma: float,
                 generator: torch.Generator | None = None) -> None:
    """Initialize the parameters and buffers ``module`` owns directly (not its children's)."""
    check_target(target)
    if isinstance(module, ReparamMatrix):
        fan_in = module.in_features if module.kind == 'linear' else None
        module.init_(target_std(module.role, target, d_model, n_layers, fan_in), sigma, generator)
        if isinstance(getattr(module, 'bias', None), torch.Tensor):
            module.bias.zero_()  # as transformers and llm-foundry do
    elif _is_rms_norm(module):
        module.weight.fill_(1.0)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            module.weight.fill_(1.0)
        if module.bias is not None:
            module.bias.zero_()
    elif _is_rotary(module):
        # A non-persistent buffer: after to_empty it holds garbage and no checkpoint restores it.
        inv_freq, _ = module.rope_init_fn(module.config, module.inv_freq.device)
        module.inv_freq.copy_(inv_freq)
        module.original_inv_freq = module.inv_freq
