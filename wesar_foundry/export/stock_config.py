"""The config of a merged model, for every family: the gated config less the keys a stock one must not carry.

A gated config is its stock architecture's config plus the reparameterization's options
(``wesar_llama`` and ``wesar_mpt``: as attributes; ``wesar_hf``: one ``wesar_hf`` entry). The
stock config keeps every architecture key as it was trained, drops the options and what
``PretrainedConfig`` derives or ``save_pretrained`` writes, and names the stock class and the
export dtype. A family's adapter adds only what its stock form needs (Llama's GeLU in gated form,
MPT's loader settings).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from wesar_foundry.models.hf import CONFIG_KEY

# What a gated config holds and no stock config may: the options of every family, then what
# PretrainedConfig derives or save_pretrained writes (the stock config sets its own).
DROP_KEYS = (
    CONFIG_KEY, 'mlp_type', 'reparam', 'multipliers', 'init_target', 'sigma2', 'sigma_choice', 'sigma_reparam_gamma_init',
    'roles',
    'model_type', 'architectures', 'auto_map', 'transformers_version', '_name_or_path', 'torch_dtype',
    '_attn_implementation_autoset',
)
TOKEN_IDS = ('bos_token_id', 'eos_token_id', 'pad_token_id')


def stock_config(config: PretrainedConfig, model_class: type[PreTrainedModel], dtype: torch.dtype,
                 tokenizer: Any = None, **fields: Any) -> PretrainedConfig:
    """The config of ``model_class`` (its ``config_class``) for the merge of a model of gated ``config``.

    ``config``'s keys less ``DROP_KEYS``, then ``fields``; ``architectures`` names ``model_class``
    and ``torch_dtype`` is ``dtype``. The tokenizer's bos/eos/pad ids replace the config's, so
    ``generate`` stops at the tokenizer's EOS and evaluation harnesses pad correctly.
    """
    if config.tie_word_embeddings:
        # Every builder refuses it (the embedding and the LM head have separate gains): such a
        # config was edited, and one stored matrix cannot compute both merged matrices.
        raise ValueError(f'{config.model_type} config with tie_word_embeddings=True: no wesar-foundry model is built '
                         'tied (the embedding and the LM head have separate gains), and a tied stock checkpoint '
                         'would use one matrix for both, so it is not exported')
    values = {k: copy.deepcopy(v) for k, v in config.to_dict().items() if k not in DROP_KEYS}
    if tokenizer is not None:
        values.update({k: getattr(tokenizer, k) for k in TOKEN_IDS if getattr(tokenizer, k, None) is not None})
    values.update(fields, architectures=[model_class.__name__], torch_dtype=dtype)
    return model_class.config_class(**values)
