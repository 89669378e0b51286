"""``WeSaRMPTComposerModel``: the Composer model llm-foundry builds for ``name: wesar_mpt``.

The same wrapper as ``wesar_llama``'s (loss with z-loss, LM and in-context-learning metrics,
FLOPs), around ``WeSaRMPTForCausalLM``. Every ``model:`` key is either a ``WeSaRMPTOptions`` field or
an ``MPTConfig`` argument; anything else is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from wesar_foundry.foundry.mpt.config import WeSaRMPTConfig, WeSaRMPTOptions
from wesar_foundry.foundry.mpt.modeling import WeSaRMPTForCausalLM
from wesar_foundry.foundry.composer_models import ReparamComposerModel


class WeSaRMPTComposerModel(ReparamComposerModel):
    """llm-foundry's MPT with reparameterized matrices, registered in ``models`` as ``wesar_mpt``."""

    registry_name = 'wesar_mpt'

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None = None, **model_kwargs: Any):
        options, mpt_kwargs = WeSaRMPTOptions.split(model_kwargs)
        # The name always: MPT fills a missing one with its own default init (kaiming_normal_).
        init_config = {**options.init_config, 'name': options.init_name}
        config = WeSaRMPTConfig(reparam=options.reparam, sigma_reparam_gamma_init=options.sigma_reparam_gamma_init,
                                roles=options.roles, multipliers=options.chosen_multipliers, init_config=init_config,
                                **mpt_kwargs)
        if tokenizer is not None and len(tokenizer) > config.vocab_size:
            raise ValueError(f'model.vocab_size={config.vocab_size} is smaller than the tokenizer ({len(tokenizer)} '
                             f'tokens); set model.vocab_size >= {len(tokenizer)}')
        # MPT resolves init_device itself ('mixed': cpu on local rank 0, meta elsewhere); the model
        # refuses what a stock MPT cannot express (check_expressible) before building anything.
        model = WeSaRMPTForCausalLM(config)
        if config.init_device != 'meta':
            model.apply(model.param_init_fn)
        super().__init__(model, tokenizer, options, n_layers=config.n_layers, d_model=config.d_model)

    def forward(self, batch: Mapping) -> torch.Tensor:
        # MPT's attn_uses_sequence_id needs the packed sequences' ids in training.
        return self.model(input_ids=batch['input_ids'], attention_mask=batch.get('attention_mask'),
                          sequence_id=batch.get('sequence_id'), use_cache=False).logits
