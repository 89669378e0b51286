"""``wesar_hf_checkpointer``: llm-foundry's ``hf_checkpointer`` writing merged stock checkpoints.

A subclass of llm-foundry's ``HuggingFaceCheckpointer`` that keeps all of its behaviour
(``save_folder`` local or remote, ``save_interval`` plus the end of training,
``huggingface_folder_name``, MLflow registration with ``mlflow_registered_model_name``, and under
FSDP the full-state-dict gathering on rank 0) and changes only what is saved: the gathered
``wesar_llama`` model is merged into a stock ``LlamaForCausalLM`` (``model_type: llama``, see
``wesar_foundry.export``) before ``save_pretrained``; a ``wesar_hf`` model into the stock class of
its own ``model_type``.

    callbacks:
      wesar_hf_checkpointer:
        save_folder: ./checkpoints/{run_name}    # or s3://bucket/...; files go to <save_folder>/huggingface/ba<N>
        save_interval: 1000ba
        precision: bfloat16                      # default: the training dtype (fp32; bf16 for amp_bf16)
"""

from __future__ import annotations

from typing import Any

import torch
from composer.core import Event, State
from composer.loggers import Logger
from llmfoundry.callbacks.hf_checkpointer import HuggingFaceCheckpointer
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from wesar_foundry.export import check_tied_gains, parse_dtype, to_stock, training_dtype
from wesar_foundry.model.hf import is_gated_hf
from wesar_foundry.model.modeling import WeSaRLlamaForCausalLM

__all__ = ['WeSaRHuggingFaceCheckpointer']


def _inner_model(state: State):
    """The HF model inside the Composer wrapper, unwrapped the way HuggingFaceCheckpointer does."""
    if state.is_model_ddp:
        return state.model.module.model
    if isinstance(state.model.model, FSDP):
        return state.model.model.module
    return state.model.model


class MergingCheckpointer(HuggingFaceCheckpointer):
    """What every exporting checkpointer here shares: ``precision`` is the export dtype (default
    the training dtype), while the full state dict is gathered in fp32 (the masters), merged in
    fp32 and cast once; the model is checked at INIT (``check_model``), not at the first save.
    Subclasses set ``name`` and merge in ``transform_model_and_tokenizer``."""

    name = 'hf_checkpointer'

    def __init__(self, save_folder: str, save_interval: Any, precision: str | None = None, **kwargs: Any):
        self.export_dtype = None if precision is None else parse_dtype(precision, key=f'{self.name}.precision')
        # The parent's precision is the dtype its state-dict hook casts the gathered tensors to:
        # fp32, so that the merge sees the fp32 masters.
        super().__init__(save_folder=save_folder, save_interval=save_interval, precision='float32', **kwargs)
        self._save_dtype = self.export_dtype

    def check_model(self, model) -> None:
        """Raise a ValueError if this checkpointer cannot export ``model`` (the inner HF model)."""

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self.check_model(_inner_model(state))
        super().run_event(event, state, logger)

    def _get_hf_model(self, state: State):
        self._save_dtype = self.export_dtype or training_dtype(state.precision)
        self.dtype = torch.float32  # what the parent's gathering hook casts to
        return super()._get_hf_model(state)


class WeSaRHuggingFaceCheckpointer(MergingCheckpointer):
    """``HuggingFaceCheckpointer`` for ``wesar_llama`` and ``wesar_hf`` models that saves the merged stock model.

    Args are those of llm-foundry's ``hf_checkpointer``, except ``precision``: ``float32``,
    ``bfloat16`` or ``float16`` (``fp32``/``bf16``/``fp16`` too), default ``None`` = the training
    dtype. Whatever the precision, the full state dict is gathered in fp32 (the masters), merged in
    fp32 and cast once.
    """

    name = 'wesar_hf_checkpointer'

    def check_model(self, model) -> None:
        if not isinstance(model, WeSaRLlamaForCausalLM) and not is_gated_hf(model):
            raise ValueError(f'wesar_hf_checkpointer exports wesar_llama and wesar_hf models only; got '
                             f'{type(model).__name__}. Use llm-foundry\'s hf_checkpointer for other models')
        check_tied_gains(model)

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        super().run_event(event, state, logger)
        if event == Event.INIT and self.using_peft:
            raise ValueError('wesar_hf_checkpointer does not export PEFT (adapter) models')

    def transform_model_and_tokenizer(self, model, tokenizer):
        # Called on global rank 0 with a copy of the model holding the gathered fp32 state dict.
        return to_stock(model, self._save_dtype, tokenizer), tokenizer
