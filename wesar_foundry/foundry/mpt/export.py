"""Merge a ``wesar_mpt`` model into a stock llm-foundry ``MPTForCausalLM`` (``model_type: mpt``).

Every reparameterized matrix becomes a plain weight holding its W̄ = s ⊙ W, computed in fp32 from
the fp32 masters (``ReparamMatrix.merged_weight``) and cast once; a bias is copied as it is (the
gain scales W, not W x + b); norms are copied. The stock config is ours without the
reparameterization keys, with what llm-foundry's ``hf_checkpointer`` sets for MPT
(``attn_impl: torch``, ``init_device: cpu``) and MPT's default ``init_config``: loading the export
draws the weights with an init a clean process knows, then overwrites them from the file.

Written by ``wesar_mpt_hf_checkpointer`` through llm-foundry's own ``HuggingFaceCheckpointer``, the
folder is what ``hf_checkpointer`` writes for a stock MPT: ``config.json`` with ``auto_map``, the
weights, the tokenizer, and MPT's modeling code with llm-foundry's imports flattened, loadable with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
"""

from __future__ import annotations

import copy

import torch
from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
from llmfoundry.models.utils.config_defaults import init_config_defaults
from transformers.integrations.accelerate import init_empty_weights

from wesar_foundry.foundry.mpt.config import WeSaRMPTConfig
from wesar_foundry.foundry.mpt.modeling import WeSaRMPTForCausalLM

# WeSaRMPTConfig's own keys and what PretrainedConfig derives; a stock MPTConfig carries none of them.
_DROP_CONFIG_KEYS = ('reparam', 'sigma_reparam_gamma_init', 'model_type', 'architectures', 'auto_map',
                     'transformers_version', '_name_or_path', 'torch_dtype', '_attn_implementation_autoset')


def stock_mpt_config(config: WeSaRMPTConfig, dtype: torch.dtype = torch.float32) -> MPTConfig:
    """The ``MPTConfig`` of the merged model (module doc)."""
    fields = {k: copy.deepcopy(v) for k, v in config.to_dict().items() if k not in _DROP_CONFIG_KEYS}
    fields['attn_config']['attn_impl'] = 'torch'
    fields['init_device'] = 'cpu'
    fields['init_config'] = copy.deepcopy(init_config_defaults)
    return MPTConfig(**fields, torch_dtype=dtype)


@torch.no_grad()
def merged_state_dict(model: WeSaRMPTForCausalLM, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The stock MPT state dict of ``model`` in ``dtype``: every W̄ merged in fp32, then cast once."""
    reparams = model.reparam_modules()
    owned = {f'{name}.{key}' for name, m in reparams.items() for key in m.state_dict()}
    state = {}
    for name, module in reparams.items():
        state[f'{name}.weight'] = module.merged_weight().to(dtype)
        if isinstance(getattr(module, 'bias', None), torch.Tensor):
            state[f'{name}.bias'] = module.bias.detach().to(dtype, copy=True)
    for key, value in model.state_dict().items():
        if key not in owned:
            state[key] = value.detach().to(dtype if value.is_floating_point() else value.dtype, copy=True)
    return state


@torch.no_grad()
def to_mpt(model: WeSaRMPTForCausalLM, dtype: torch.dtype = torch.float32) -> MPTForCausalLM:
    """A stock ``MPTForCausalLM`` in ``dtype`` computing what ``model`` computes in eval mode."""
    if not isinstance(model, WeSaRMPTForCausalLM):
        raise ValueError(f'expected a WeSaRMPTForCausalLM, got {type(model).__name__}')
    config = stock_mpt_config(model.config, dtype)
    with init_empty_weights():  # parameters on meta: the merged tensors are assigned as they are
        stock = MPTForCausalLM(config)
    state = merged_state_dict(model, dtype)
    expected = set(stock.state_dict())
    if set(state) != expected:
        raise RuntimeError(f'merged state dict does not match MPTForCausalLM: missing {sorted(expected - set(state))}, '
                           f'unexpected {sorted(set(state) - expected)}')
    stock.load_state_dict(state, assign=True)
    if model.generation_config is not None:
        stock.generation_config.update(**model.generation_config.to_dict())
    return stock.eval()
