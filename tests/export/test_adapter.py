"""Finding a family's adapter: from a model or a saved config, ``wesar_hf`` by its entry whatever its
model_type, every other model refused by name, and MPT's (llm-foundry's) imported only when needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import GPTNeoXConfig, LlamaConfig, LlamaForCausalLM

from wesar_foundry.export.adapter import ADAPTERS, adapter_of, family_of, load_adapter


def test_every_family_has_an_adapter_that_names_it():
    assert sorted(ADAPTERS) == ['wesar_hf', 'wesar_llama', 'wesar_mpt']
    assert {family: load_adapter(family).family for family in ADAPTERS} == {f: f for f in ADAPTERS}


@pytest.mark.parametrize('config,family', [
    ({'model_type': 'wesar_llama'}, 'wesar_llama'),
    ({'model_type': 'wesar_mpt'}, 'wesar_mpt'),
    ({'model_type': 'llama', 'wesar_hf': {'reparam': 'wesar'}}, 'wesar_hf'),  # a stock model_type with the entry
    ({'model_type': 'llama'}, 'llama'),
    (GPTNeoXConfig(wesar_hf={'reparam': 'wesar'}), 'wesar_hf'),
    (LlamaConfig(), 'llama'),
], ids=['llama', 'mpt', 'hf-content', 'stock-content', 'hf-config', 'stock-config'])
def test_the_family_of_a_config_is_wesar_hf_if_it_carries_the_entry_else_its_model_type(config, family):
    assert family_of(config) == family


@pytest.mark.parametrize('model', [
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=64)),
    object(),
], ids=['stock-llama', 'not-a-model'])
def test_a_model_that_is_not_gated_is_refused_naming_the_families(model):
    with pytest.raises(ValueError, match=rf'expected a gated model \(wesar_llama, wesar_hf, wesar_mpt\), '
                                         rf'got {type(model).__name__}'):
        adapter_of(model)


_PROBE = r'''
import json, sys
from wesar_foundry.export.adapter import load_adapter
import wesar_foundry.export
seen = {}
def frameworks():
    return sorted({m.split('.')[0] for m in sys.modules} & {'composer', 'llmfoundry'})
seen['export'] = frameworks()
load_adapter('wesar_llama'), load_adapter('wesar_hf')
seen['llama and hf adapters'] = frameworks()
load_adapter('wesar_mpt')
seen['mpt adapter'] = frameworks()
print(json.dumps(seen))
'''


@pytest.mark.slow
def test_llm_foundry_is_imported_only_with_the_mpt_adapter():
    proc = subprocess.run([sys.executable, '-I', '-c', _PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen == {'export': [], 'llama and hf adapters': [], 'mpt adapter': ['composer', 'llmfoundry']}
