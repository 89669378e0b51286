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

from wesar_foundry.foundry.callbacks.hf_export import MergingCheckpointer
from wesar_foundry.foundry.mpt.config import WeSaRMPTConfig
from wesar_foundry.foundry.mpt.export import to_mpt
from wesar_foundry.foundry.mpt.modeling import WeSaRMPTForCausalLM

__all__ = ['WeSaRMPTHuggingFaceCheckpointer']


class WeSaRMPTHuggingFaceCheckpointer(MergingCheckpointer):
    """``HuggingFaceCheckpointer`` for ``wesar_mpt`` models that saves the merged stock MPT.

    Args are those of llm-foundry's ``hf_checkpointer``, except ``precision``: ``float32``,
    ``bfloat16`` or ``float16`` (``fp32``/``bf16``/``fp16`` too), default ``None`` = the training
    dtype. The state dict is gathered in fp32 (the masters), merged in fp32 and cast once.
    """

    name = 'wesar_mpt_hf_checkpointer'

    def check_model(self, model) -> None:
        if not isinstance(model, WeSaRMPTForCausalLM):
            raise ValueError(f'wesar_mpt_hf_checkpointer exports wesar_mpt models only; got {type(model).__name__}')

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
