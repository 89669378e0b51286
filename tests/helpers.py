"""Helpers shared by tests: build the registered model on CPU, make a batch."""

from __future__ import annotations

import torch

# The smallest model that still has every role: fast enough for many train() calls per session.
TINY_MODEL = {'d_model': 32, 'n_layers': 2, 'n_heads': 2, 'vocab_size': 512, 'max_seq_len': 32}


def build_model(**model_kwargs):
    """The registered Composer model, as llm-foundry builds it, on CPU."""
    from wesar_foundry.model.composer import WeSaRComposerModel
    return WeSaRComposerModel(**{'init_device': 'cpu', **TINY_MODEL, **model_kwargs})


def build_tied_model(**model_kwargs):
    """A model with its embedding and LM head tied by hand (the YAML key refuses it), for the
    export's own guard against tied matrices it cannot express."""
    model = build_model(**model_kwargs)
    hf = model.model
    hf.config.tie_word_embeddings = True
    hf.lm_head.weight = hf.model.embed_tokens.weight
    return model


def batch(vocab: int = TINY_MODEL['vocab_size'], bs: int = 2, seq: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (bs, seq), generator=g)
    return {'input_ids': ids, 'labels': ids.clone()}
