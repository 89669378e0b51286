"""What one family of gated models tells the export (``Adapter``), and finding a family's adapter.

Reading a checkpoint, merging and writing are the same for every family; an adapter says only
what differs: how to recover the gated config and build the gated model, which stock config and
class the merge fills, which stock keys a merged matrix becomes, and what else the folder holds.

A family is found from a config (or a saved config.json's content): ``wesar_hf`` if it carries a
``wesar_hf`` entry (its model_type is the stock one), else its model_type. Adapters are imported
by module name when first needed: MPT's lives with llm-foundry's MPT, in ``foundry/``, and
``export`` never imports llm-foundry itself.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from wesar_foundry.models.hf import CONFIG_KEY

# Family → the module whose ``ADAPTER`` exports it.
ADAPTERS = {
    'wesar_llama': 'wesar_foundry.export.llama_adapter',
    'wesar_hf': 'wesar_foundry.export.hf_adapter',
    'wesar_mpt': 'wesar_foundry.foundry.mpt.mpt_adapter',
}


class Adapter(ABC):
    """One family's mapping onto its stock architecture (one subclass per family)."""

    family: str
    """The family's name, a key of ``ADAPTERS``."""

    @abstractmethod
    def is_gated(self, model: Any) -> bool:
        """Whether ``model`` is this family's gated model."""

    @abstractmethod
    def gated_config(self, content: dict[str, Any]) -> PretrainedConfig:
        """The gated config from a saved config.json's ``content``."""

    @abstractmethod
    def build(self, config: PretrainedConfig) -> PreTrainedModel:
        """The gated model of ``config`` (called under ``init_empty_weights``: parameters on meta)."""

    @abstractmethod
    def stock(self, config: PretrainedConfig, dtype: torch.dtype,
              tokenizer: Any = None) -> tuple[PretrainedConfig, type[PreTrainedModel]]:
        """The stock config (in ``dtype``) and class that the gated ``config``'s model merges into."""

    def tensors(self, config: PretrainedConfig, name: str, weight: torch.Tensor,
                bias: torch.Tensor | None) -> Iterator[tuple[str, torch.Tensor]]:
        """The stock state-dict entries of the merged matrix ``name`` (W̄ and its bias): by default
        the same names, ``<name>.weight`` and ``<name>.bias``."""
        if bias is not None:
            yield f'{name}.bias', bias
        yield f'{name}.weight', weight

    def finish_folder(self, folder: Path) -> None:
        """Complete a written checkpoint folder before it is renamed into place (default: nothing)."""


def family_of(config: PretrainedConfig | Mapping[str, Any]) -> str | None:
    """The family of a config or of a config.json's content: ``wesar_hf`` if it carries that entry,
    else its model_type."""
    if isinstance(config, Mapping):
        return CONFIG_KEY if CONFIG_KEY in config else config.get('model_type')
    return CONFIG_KEY if hasattr(config, CONFIG_KEY) else config.model_type


def load_adapter(family: str) -> Adapter:
    """The adapter of ``family`` (a key of ``ADAPTERS``), its module imported now."""
    return importlib.import_module(ADAPTERS[family]).ADAPTER


def adapter_of(model: Any) -> Adapter:
    """The adapter of a gated model, or a ValueError naming the families that export."""
    family = family_of(model.config) if isinstance(getattr(model, 'config', None), PretrainedConfig) else None
    adapter = load_adapter(family) if family in ADAPTERS else None
    if adapter is None or not adapter.is_gated(model):
        raise ValueError(f'expected a gated model ({", ".join(ADAPTERS)}), got {type(model).__name__}')
    return adapter
