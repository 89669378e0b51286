"""``wesar_mpt`` → llm-foundry's stock ``MPTForCausalLM`` (``model_type: mpt``): MPT's export adapter.

``wesar_foundry.export`` imports this module by name when it exports a ``wesar_mpt`` model (the
MPT classes are llm-foundry's, which ``export`` itself never imports). The module tree is MPT's,
so every merged matrix keeps its name. The stock config is ours through the one stock-config
writer, with what llm-foundry's ``hf_checkpointer`` sets for MPT (``attn_impl: torch``,
``init_device: cpu``) and MPT's default ``init_config``: loading the export draws the weights with
an init a clean process knows, then overwrites them from the file.

The folder is what ``hf_checkpointer`` writes for a stock MPT, with llm-foundry's own functions:
``config.json`` with ``auto_map`` and MPT's modeling code (``register_for_auto_class``, then
``save_pretrained``), llm-foundry's imports flattened into it (``edit_files_for_hf_compatibility``),
the weights and the tokenizer; it loads with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
from llmfoundry.models.utils.config_defaults import init_config_defaults
from llmfoundry.utils.huggingface_hub_utils import edit_files_for_hf_compatibility

from wesar_foundry.export.adapter import Adapter
from wesar_foundry.export.stock_config import stock_config
from wesar_foundry.foundry.mpt.config import WeSaRMPTConfig
from wesar_foundry.foundry.mpt.modeling import WeSaRMPTForCausalLM


def rebuild_config(config: MPTConfig) -> MPTConfig:
    """A copy of ``config`` to rebuild the model in one CPU process: what ``hf_checkpointer`` sets
    for an MPT it rebuilds (torch attention, whatever kernel trained it; cpu init)."""
    config = copy.deepcopy(config)
    config.attn_config['attn_impl'] = 'torch'
    config.init_device = 'cpu'
    return config


class MPTAdapter(Adapter):
    """``wesar_mpt`` → ``MPTForCausalLM`` with its modeling code (module doc)."""

    family = WeSaRMPTConfig.model_type

    def is_gated(self, model: Any) -> bool:
        return isinstance(model, WeSaRMPTForCausalLM)

    def gated_config(self, content: dict[str, Any]) -> WeSaRMPTConfig:
        return rebuild_config(WeSaRMPTConfig.from_dict(content))

    def build(self, config: WeSaRMPTConfig) -> WeSaRMPTForCausalLM:
        return WeSaRMPTForCausalLM(config)

    def stock(self, config: WeSaRMPTConfig, dtype: torch.dtype,
              tokenizer: Any = None) -> tuple[MPTConfig, type[MPTForCausalLM]]:
        # As hf_checkpointer before it saves: save_pretrained then writes auto_map and MPT's code.
        MPTConfig.register_for_auto_class()
        MPTForCausalLM.register_for_auto_class('AutoModelForCausalLM')
        # The tokenizer's ids are not written: hf_checkpointer keeps MPT's config as it trained.
        fields = {'attn_config': {**config.attn_config, 'attn_impl': 'torch'}, 'init_device': 'cpu',
                  'init_config': copy.deepcopy(init_config_defaults)}
        return stock_config(config, MPTForCausalLM, dtype, **fields), MPTForCausalLM

    def finish_folder(self, folder: Path) -> None:
        # The copied modeling code imports llm-foundry: copy those modules in, relative imports.
        edit_files_for_hf_compatibility(str(folder))


ADAPTER = MPTAdapter()
