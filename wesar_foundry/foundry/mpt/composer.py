"""``WeSaRMPTComposerModel``: the Composer model llm-foundry builds for ``name: wesar_mpt``.

The same wrapper as ``wesar_llama``'s (loss with z-loss, LM and in-context-learning metrics,
FLOPs), around ``WeSaRMPTForCausalLM``. Every ``model:`` key is either an ``MPTOptions`` field or
an ``MPTConfig`` argument; anything else is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from wesar_foundry.foundry.mpt.config import MPTOptions, WeSaRMPTConfig, check_expressible
from wesar_foundry.foundry.mpt.modeling import WeSaRMPTForCausalLM
from wesar_foundry.model.composer import ReparamComposerModel


class WeSaRMPTComposerModel(ReparamComposerModel):
    """llm-foundry's MPT with reparameterized matrices, registered in ``models`` as ``wesar_mpt``."""

    registry_name = 'wesar_mpt'

    def __init__(self, tokenizer=None, **model_kwargs: Any):
        options, mpt_kwargs = MPTOptions.split(model_kwargs)
        config = WeSaRMPTConfig(reparam=options.reparam, sigma_reparam_gamma_init=options.sigma_reparam_gamma_init,
                                init_config=dict(options.init_config), **mpt_kwargs)
        check_expressible(config)
        if tokenizer is not None and len(tokenizer) > config.vocab_size:
            raise ValueError(f'model.vocab_size={config.vocab_size} is smaller than the tokenizer ({len(tokenizer)} '
                             f'tokens); set model.vocab_size >= {len(tokenizer)}')
        self.mpt_options = options
        # MPT resolves init_device itself ('mixed': cpu on local rank 0, meta elsewhere).
        model = WeSaRMPTForCausalLM(config)
        if config.init_device != 'meta':
            model.apply(model.param_init_fn)
        super().__init__(model, tokenizer, z_loss=options.z_loss, use_train_metrics=options.use_train_metrics,
                         n_layers=config.n_layers, d_model=config.d_model, sigma_choice=options.sigma_choice)

    def forward(self, batch: Mapping) -> torch.Tensor:
        # MPT's attn_uses_sequence_id needs the packed sequences' ids in training.
        return self.model(input_ids=batch['input_ids'], attention_mask=batch.get('attention_mask'),
                          sequence_id=batch.get('sequence_id'), use_cache=False).logits
