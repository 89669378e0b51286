"""Builders shared by tests: the registered models on CPU, a batch, the losses a training run logged."""

from __future__ import annotations

from pathlib import Path

import torch

# The smallest model that still has every role: fast enough for many train() calls per session.
TINY_MODEL = {'d_model': 32, 'n_layers': 2, 'n_heads': 2, 'vocab_size': 512, 'max_seq_len': 32}
# One init per reparam that trains at the tiny size (weight_norm and σReparam need a larger σ).
INITS = {'wesar': {'name': 'wesar_'}, 'none': {'name': 'small'}, 'weight_norm': {'name': 'wesar_', 'sigma2': 16e-5},
         'sigma_reparam': {'name': 'wesar_', 'sigma2': 16e-5}, 'residual_scaling': {'name': 'small'},
         'multipliers': {'name': 'wesar_'}}

# wesar_hf at the tiny size: config_overrides for every family, plus each family's own keys.
HF_SIZES = {'hidden_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 2, 'intermediate_size': 64,
            'vocab_size': 512, 'max_position_embeddings': 32, 'pad_token_id': 0}
FAMILY_KEYS = {'llama': {}, 'mistral': {'num_key_value_heads': 1, 'sliding_window': None},
               'qwen2': {'num_key_value_heads': 1}, 'qwen3': {'num_key_value_heads': 1, 'head_dim': 16},
               'gpt_neox': {}, 'phi3': {'num_key_value_heads': 1}}
# The shipped tiny wesar_hf YAMLs shrunk to the test size (their pad ids stay the tokenizer's).
HF_YAML_SIZES = {'hidden_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 2, 'intermediate_size': 64,
                 'vocab_size': 512, 'max_position_embeddings': 32}


# The keys with which the shipped tiny YAMLs save a Composer checkpoint (once, at the end, under
# runs/<run_name>/): a test built on those YAMLs saves only where and when it says.
TINY_SAVE_KEYS = ('save_folder', 'save_interval', 'save_num_checkpoints_to_keep', 'save_overwrite')


def without_saving(cfg):
    """``cfg`` (a tiny YAML, loaded) without its ``TINY_SAVE_KEYS``."""
    for key in TINY_SAVE_KEYS:
        cfg.pop(key, None)
    return cfg


def build_model(**model_kwargs):
    """The registered ``wesar_llama`` Composer model, as llm-foundry builds it, on CPU."""
    from wesar_foundry.foundry.composer_models import WeSaRLlamaComposerModel
    return WeSaRLlamaComposerModel(**{'init_device': 'cpu', **TINY_MODEL, **model_kwargs})


def build_hf(model_type: str = 'llama', overrides: dict | None = None, **kwargs):
    """The registered ``wesar_hf`` Composer model of ``model_type`` at the tiny size, on CPU."""
    from wesar_foundry.foundry.composer_models import WeSaRHFComposerModel
    sizes = {**HF_SIZES, **FAMILY_KEYS.get(model_type, {}), **(overrides or {})}
    return WeSaRHFComposerModel(model_type=model_type, config_overrides=sizes, **kwargs)


def batch(vocab: int = TINY_MODEL['vocab_size'], bs: int = 2, seq: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (bs, seq), generator=g)
    return {'input_ids': ids, 'labels': ids.clone()}


def adam_steps(composer_model, seeds, optimizer=None, vocab: int = TINY_MODEL['vocab_size']):
    """One Adam step (lr 1e-2 unless ``optimizer`` is given) on the model's own loss per batch seed, in
    train mode (σReparam's power iteration runs too), moving gates and biases off their init values;
    returns the optimizer."""
    optimizer = optimizer or torch.optim.Adam(composer_model.parameters(), lr=1e-2)
    composer_model.train()
    for seed in seeds:
        b = batch(vocab=vocab, seed=seed)
        loss = composer_model.loss(composer_model(b), b)['total']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def losses(trainer) -> list[float]:
    """``loss/train/total`` of every step, from the run's InMemoryLogger."""
    logger = next(d for d in trainer.logger.destinations if type(d).__name__ == 'InMemoryLogger')
    return [float(v) for _, v in logger.data['loss/train/total']]


def docs_text() -> str:
    """README.md and every page of docs/, one string: what a reader can find a command in."""
    root = Path(__file__).resolve().parents[1]
    return '\n\n'.join(p.read_text() for p in [root / 'README.md', *sorted((root / 'docs').glob('*.md'))])
