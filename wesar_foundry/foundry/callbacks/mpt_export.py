"""``wesar_mpt_hf_checkpointer``: llm-foundry's ``hf_checkpointer`` writing merged stock-MPT checkpoints.

A subclass of llm-foundry's ``HuggingFaceCheckpointer`` that keeps all of its behaviour (save
folder local or remote, ``save_interval`` plus the end of training, MLflow registration, FSDP
gathering on rank 0, MPT's custom code copied with llm-foundry's imports flattened) and changes
only the model it saves: the gathered ``wesar_mpt`` model is merged into a stock ``MPTForCausalLM``
(``wesar_foundry.foundry.mpt.export``) in the hook llm-foundry provides for it,
``transform_model_and_tokenizer``.

    callbacks:
      wesar_mpt_hf_checkpointer:
        save_folder: ./checkpoints/{run_name}    # files go to <save_folder>/huggingface/ba<N>
        save_interval: 1000ba
        precision: bfloat16                      # default: the training dtype
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from composer.core import Event, State
from composer.loggers import Logger
from llmfoundry.callbacks.hf_checkpointer import HuggingFaceCheckpointer

from wesar_foundry.export import parse_dtype, training_dtype
from wesar_foundry.foundry.mpt.config import WeSaRMPTConfig
from wesar_foundry.foundry.mpt.export import to_mpt
from wesar_foundry.foundry.mpt.modeling import WeSaRMPTForCausalLM

__all__ = ['WeSaRMPTHuggingFaceCheckpointer']


class WeSaRMPTHuggingFaceCheckpointer(HuggingFaceCheckpointer):
    """``HuggingFaceCheckpointer`` for ``wesar_mpt`` models that saves the merged stock MPT.

    Args are those of llm-foundry's ``hf_checkpointer``, except ``precision``: ``float32``,
    ``bfloat16`` or ``float16`` (``fp32``/``bf16``/``fp16`` too), default ``None`` = the training
    dtype. The state dict is gathered in fp32 (the masters), merged in fp32 and cast once.
    """

    def __init__(self, save_folder: str, save_interval: Any, precision: str | None = None, **kwargs: Any):
        self.export_dtype = None if precision is None else parse_dtype(precision, key='wesar_mpt_hf_checkpointer.precision')
        # The parent's precision is the dtype its gathering hook casts to: fp32, for the merge.
        super().__init__(save_folder=save_folder, save_interval=save_interval, precision='float32', **kwargs)
        self._save_dtype = self.export_dtype

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            # Refuse at the start of training rather than at the first save.
            model = state.model.model
            model = getattr(model, 'module', model)  # FSDP1-wrapped
            if not isinstance(model, WeSaRMPTForCausalLM):
                raise ValueError(f'wesar_mpt_hf_checkpointer exports wesar_mpt models only; got {type(model).__name__}')
        super().run_event(event, state, logger)

    def _get_hf_model(self, state: State):
        self._save_dtype = self.export_dtype or training_dtype(state.precision)
        self.dtype = torch.float32  # what the parent's gathering hook casts to
        return super()._get_hf_model(state)

    def transform_config(self, original_config):
        # What the parent does for model_type 'mpt', for the gated copy it rebuilds from this config.
        if not isinstance(original_config, WeSaRMPTConfig):
            return super().transform_config(original_config)
        config = copy.deepcopy(original_config)
        config.attn_config['attn_impl'] = 'torch'
        config.init_device = 'cpu'
        return config

    def transform_model_and_tokenizer(self, model, tokenizer):
        # Called on global rank 0 with a copy of the model holding the gathered fp32 state dict.
        return to_mpt(model, self._save_dtype), tokenizer
