"""``wesar_hf_checkpointer`` and ``wesar_mpt_hf_checkpointer``: llm-foundry's ``hf_checkpointer`` writing merged stock checkpoints.

``MergingCheckpointer`` is llm-foundry's ``HuggingFaceCheckpointer`` with all of its behaviour
(``save_folder`` local or remote, ``save_interval`` plus the end of training,
``huggingface_folder_name``, MLflow registration with ``mlflow_registered_model_name``, under FSDP
the full-state-dict gathering on rank 0, and for MPT its modeling code copied with llm-foundry's
imports flattened), changing only what is saved: the gathered gated model is merged by
``wesar_foundry.export.to_stock`` into the stock class of its architecture (``wesar_llama`` →
``LlamaForCausalLM``, ``wesar_hf`` → the class of its model_type, ``wesar_mpt`` → ``MPTForCausalLM``)
in the hook llm-foundry provides for it, ``transform_model_and_tokenizer``. It is registered under
two names, one per family of YAMLs (``wesar_mpt_hf_checkpointer`` for MPT's); both export any
gated model.

    callbacks:
      wesar_hf_checkpointer:                     # or wesar_mpt_hf_checkpointer
        save_folder: ./checkpoints/{run_name}    # or s3://bucket/...; files go to <save_folder>/huggingface/ba<N>
        save_interval: 1000ba
        precision: bfloat16                      # default: the training dtype (fp32; bf16 for amp_bf16)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from composer.core import Event, State, Time
from composer.loggers import Logger
from llmfoundry.callbacks.hf_checkpointer import HuggingFaceCheckpointer
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from wesar_foundry.export import parse_dtype, to_stock, training_dtype
from wesar_foundry.export.adapter import adapter_of
from wesar_foundry.foundry.mpt.config import WeSaRMPTConfig
from wesar_foundry.foundry.mpt.mpt_adapter import rebuild_config

__all__ = ['MergingCheckpointer', 'WeSaRHuggingFaceCheckpointer', 'WeSaRMPTHuggingFaceCheckpointer']


def _inner_model(state: State) -> PreTrainedModel:
    """The HF model inside the Composer wrapper, unwrapped the way HuggingFaceCheckpointer does."""
    if state.is_model_ddp:
        return state.model.module.model
    if isinstance(state.model.model, FSDP):
        return state.model.model.module
    return state.model.model


class MergingCheckpointer(HuggingFaceCheckpointer):
    """``HuggingFaceCheckpointer`` that saves the merged stock model of a gated model.

    Args are those of llm-foundry's ``hf_checkpointer``, except ``precision``: ``float32``,
    ``bfloat16`` or ``float16`` (``fp32``/``bf16``/``fp16`` too), default ``None`` = the training
    dtype. Whatever the precision, the full state dict is gathered in fp32 (the masters), merged in
    fp32 and cast once. The model is checked at INIT, not at the first save.
    """

    name = 'hf_checkpointer'  # each registered subclass names itself, for its errors

    def __init__(self, save_folder: str, save_interval: str | int | Time, huggingface_folder_name: str = 'ba{batch}',
                 precision: str | None = None, overwrite: bool = True, mlflow_registered_model_name: str | None = None,
                 mlflow_logging_config: dict | None = None, flatten_imports: Sequence[str] = ('llmfoundry',),
                 final_register_only: bool = False, register_wait_seconds: int = 7200):
        self.export_dtype = None if precision is None else parse_dtype(precision, key=f'{self.name}.precision')
        # The parent's precision is the dtype its state-dict hook casts the gathered tensors to:
        # fp32, so that the merge sees the fp32 masters.
        super().__init__(save_folder=save_folder, save_interval=save_interval,
                         huggingface_folder_name=huggingface_folder_name, precision='float32', overwrite=overwrite,
                         mlflow_registered_model_name=mlflow_registered_model_name,
                         mlflow_logging_config=mlflow_logging_config, flatten_imports=flatten_imports,
                         final_register_only=final_register_only, register_wait_seconds=register_wait_seconds)
        self._save_dtype = self.export_dtype

    def check_model(self, model: PreTrainedModel) -> None:
        """Raise a ValueError if this checkpointer cannot export ``model`` (the inner HF model)."""
        try:
            adapter_of(model)
        except ValueError as e:
            raise ValueError(f'{self.name}: {e}; use llm-foundry\'s hf_checkpointer for other models') from None

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self.check_model(_inner_model(state))
        super().run_event(event, state, logger)
        if event == Event.INIT and self.using_peft:
            raise ValueError(f'{self.name} does not export PEFT (adapter) models')

    def _get_hf_model(self, state: State):
        self._save_dtype = self.export_dtype or training_dtype(state.precision)
        self.dtype = torch.float32  # what the parent's gathering hook casts to
        return super()._get_hf_model(state)

    def transform_config(self, original_config: PretrainedConfig) -> PretrainedConfig:
        # The parent rebuilds the gated model from this config on rank 0 and treats model_type
        # 'mpt' specially (torch attention, cpu init); a wesar_mpt config needs the same.
        if isinstance(original_config, WeSaRMPTConfig):
            return rebuild_config(original_config)
        return super().transform_config(original_config)

    def transform_model_and_tokenizer(
            self, model: PreTrainedModel,
            tokenizer: PreTrainedTokenizerBase | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
        # Called on global rank 0 with the rebuilt gated model holding the gathered fp32 state dict.
        return to_stock(model, self._save_dtype, tokenizer), tokenizer


class WeSaRHuggingFaceCheckpointer(MergingCheckpointer):
    """``MergingCheckpointer`` registered as ``wesar_hf_checkpointer``."""

    name = 'wesar_hf_checkpointer'


class WeSaRMPTHuggingFaceCheckpointer(MergingCheckpointer):
    """``MergingCheckpointer`` registered as ``wesar_mpt_hf_checkpointer``."""

    name = 'wesar_mpt_hf_checkpointer'
