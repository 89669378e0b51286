"""llm-foundry's in-context-learning evaluators (``icl_tasks``) run during ``train()`` with our models,
as they do with llm-foundry's own: a language-modeling and a multiple-choice task from local jsonl."""

from __future__ import annotations

import json
import math

import pytest
from llmfoundry.command_utils import train
from omegaconf import OmegaConf

from tests.foundry.callbacks.helpers import logged
from tests.helpers import TINY_MODEL

# Every test here runs llm-foundry's train() with its evaluators.
pytestmark = pytest.mark.slow

# A few lines in each of the formats llm-foundry's ICL datasets read (eval/datasets/in_context_learning_evaluation.py).
LM_ROWS = [{'context': 'def add(a, b):\n    return', 'continuation': ' a + b'},
           {'context': 'import os\nimport', 'continuation': ' sys'},
           {'context': 'for i in', 'continuation': ' range(10):'},
           {'context': 'class Foo', 'continuation': '(object):'}]
MC_ROWS = [{'query': 'The value None is', 'choices': ['a singleton', 'a number'], 'gold': 0},
           {'query': 'A list is', 'choices': ['immutable', 'mutable'], 'gold': 1},
           {'query': 'Strings are', 'choices': ['sequences', 'integers', 'files'], 'gold': 0}]

STOCK_MPT = {  # llm-foundry's own model, the control: what the same icl_tasks give without us
    'name': 'mpt_causal_lm', 'd_model': 32, 'n_layers': 2, 'n_heads': 2, 'expansion_ratio': 4, 'max_seq_len': 32,
    'vocab_size': 512, 'loss_fn': 'torch_crossentropy', 'attn_config': {'attn_impl': 'torch'},
}
MODELS = {
    'mpt_causal_lm': STOCK_MPT,
    'wesar_llama': {'name': 'wesar_llama', **TINY_MODEL},
    'wesar_mpt': {'name': 'wesar_mpt', 'd_model': 32, 'n_layers': 2, 'n_heads': 2, 'max_seq_len': 32, 'vocab_size': 512,
                  'tie_word_embeddings': False, 'no_bias': True,
                  'attn_config': {'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf'}},
    'wesar_hf': {'name': 'wesar_hf', 'model_type': 'llama', 'config_overrides': {
        'hidden_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 2, 'num_key_value_heads': 2,
        'intermediate_size': 128, 'vocab_size': 512, 'max_position_embeddings': 32, 'tie_word_embeddings': False}},
}


def write_jsonl(path, rows) -> str:
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return str(path)


def icl_tasks(folder) -> list[dict]:
    return [
        {'label': 'lm', 'dataset_uri': write_jsonl(folder / 'lm.jsonl', LM_ROWS), 'icl_task_type': 'language_modeling',
         'num_fewshot': [0, 1]},
        {'label': 'mc', 'dataset_uri': write_jsonl(folder / 'mc.jsonl', MC_ROWS), 'icl_task_type': 'multiple_choice',
         'num_fewshot': [0]},
    ]


EXPECTED = ['metrics/lm/0-shot/InContextLearningLMAccuracy', 'metrics/lm/1-shot/InContextLearningLMAccuracy',
            'metrics/mc/0-shot/InContextLearningMultipleChoiceAccuracy']


@pytest.mark.parametrize('name', list(MODELS))
def test_icl_task_metrics_are_logged_with_finite_values_at_each_eval(train_cfg, tmp_path, name):
    cfg = train_cfg('max_duration=4ba', 'eval_interval=2ba', 'icl_subset_num_batches=2')
    cfg.model = OmegaConf.create(MODELS[name])
    cfg.icl_tasks = icl_tasks(tmp_path)
    trainer = train(cfg)
    for key in EXPECTED:
        values = logged(trainer, key)
        assert sorted(values) == [2, 4], key  # every eval_interval, and at the end
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values.values()), (key, values)
