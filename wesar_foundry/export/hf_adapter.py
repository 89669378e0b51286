"""``wesar_hf`` → transformers' own class for the config's model_type (``GPTNeoXForCausalLM``, ``Phi3ForCausalLM``, ...).

The model was trained in that architecture (``wesar_foundry.models.hf``: the stock class with its
matrices replaced, names unchanged), so no rewriting is needed: every merged matrix, bias and norm
keeps its stock name, and the stock config is the training config without its ``wesar_hf`` entry.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from wesar_foundry.export.adapter import Adapter
from wesar_foundry.export.stock_config import stock_config
from wesar_foundry.models.hf import CONFIG_KEY, build_gated_model, from_checkpoint_config, is_gated_hf, stock_class


class HFAdapter(Adapter):
    """``wesar_hf`` → the stock class of its own model_type."""

    family = CONFIG_KEY

    def is_gated(self, model: Any) -> bool:
        return is_gated_hf(model)

    def gated_config(self, content: dict[str, Any]) -> PretrainedConfig:
        return from_checkpoint_config(content)

    def build(self, config: PretrainedConfig) -> PreTrainedModel:
        return build_gated_model(config)

    def stock(self, config: PretrainedConfig, dtype: torch.dtype,
              tokenizer: Any = None) -> tuple[PretrainedConfig, type[PreTrainedModel]]:
        cls = stock_class(config)
        return stock_config(config, cls, dtype, tokenizer), cls


ADAPTER = HFAdapter()
