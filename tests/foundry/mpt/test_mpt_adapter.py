"""The MPT export adapter: the merged stock ``MPTForCausalLM`` computes what the gated model computes,
and the folder (written by ``wesar_mpt_hf_checkpointer`` during training, or by ``wesar-foundry
export`` from a monolithic or sharded Composer checkpoint or a save folder) is what llm-foundry's
``hf_checkpointer`` writes for MPT, loadable in a clean process with ``trust_remote_code=True``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llmfoundry.models.mpt import MPTForCausalLM
from safetensors.torch import load_file

from tests.export.helpers import save_sharded, trained_with_spread_multipliers
from tests.foundry.mpt.helpers import INPUT_IDS, build, load_in_clean_process
from tests.helpers import INITS, adam_steps
from wesar_foundry.commands.cli import main as cli
from wesar_foundry.export import export_model, to_stock

# What `wesar-foundry export` is given: every kind of Composer checkpoint of one trained model.
SOURCES = {'monolithic': 'mono/ep0-ba2-rank0.pt', 'monolithic-save-folder': 'mono',
           'sharded': 'sharded/ep0-ba2', 'sharded-save-folder': 'sharded'}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope='module')
def exported(tiny_data, tmp_path_factory):
    """Two Adam steps on a tiny wesar_mpt (with its tokenizer), saved monolithic and sharded in save
    folders with Composer's latest links; each source exported by the command; the monolithic
    one's export loaded in a clean process."""
    from composer import Trainer
    from transformers import AutoTokenizer
    root = tmp_path_factory.mktemp('mpt-export')
    torch.manual_seed(0)
    composer_model = build(tokenizer=AutoTokenizer.from_pretrained(tiny_data / 'tokenizer'))
    optimizer = torch.optim.Adam(composer_model.parameters(), lr=1e-2)
    trainer = Trainer(model=composer_model, optimizers=optimizer, device='cpu', precision='fp32', progress_bar=False)
    adam_steps(composer_model, range(30, 32), optimizer)
    (root / 'mono').mkdir()
    trainer.save_checkpoint(str(root / SOURCES['monolithic']))
    (root / 'mono' / 'latest-rank0.pt').symlink_to('ep0-ba2-rank0.pt')
    save_sharded(trainer, root / SOURCES['sharded'])
    (root / 'sharded' / 'latest-sharded-rank0').symlink_to('ep0-ba2')
    trainer.close()
    model = composer_model.model.eval()
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS).logits
    dirs = {}
    for kind, source in SOURCES.items():
        dirs[kind] = root / 'out' / kind
        assert cli(['export', str(root / source), str(dirs[kind])]) == 0
    return {'dirs': dirs, 'logits': logits, 'loaded': load_in_clean_process(dirs['monolithic'], root / 'loader')}


@pytest.mark.slow
def test_the_export_loads_in_a_clean_process_as_stock_mpt_with_the_trained_logits(run):
    loaded = run['loaded']
    assert (loaded['class'], loaded['model_type']) == ('MPTForCausalLM', 'mpt')
    torch.testing.assert_close(loaded['logits'], run['logits'], rtol=1e-5, atol=1e-6)
    assert loaded['ours'] == []  # nothing of ours was needed to load it


@pytest.mark.slow
def test_the_export_folder_is_what_hf_checkpointer_writes_for_mpt(run):
    folder = run['folder']
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_type'] == 'mpt' and config['architectures'] == ['MPTForCausalLM']
    assert config['auto_map'] == {'AutoConfig': 'configuration_mpt.MPTConfig',
                                  'AutoModelForCausalLM': 'modeling_mpt.MPTForCausalLM'}
    assert config['attn_config']['attn_impl'] == 'torch' and config['init_config']['name'] == 'kaiming_normal_'
    assert 'reparam' not in config and not config['tie_word_embeddings']
    code = list(folder.glob('*.py'))
    assert {'configuration_mpt.py', 'modeling_mpt.py'} <= {p.name for p in code}
    assert not any('from llmfoundry' in p.read_text() for p in code)  # imports flattened, as for a stock MPT
    assert (folder / 'tokenizer.json').is_file()
    weights = load_file(folder / 'model.safetensors')
    assert not [k for k in weights if not k.endswith(('.weight', '.bias'))]  # merged: no gate left
    assert 'transformer.blocks.0.attn.Wqkv.weight' in weights and 'lm_head.weight' in weights


@pytest.mark.parametrize('layout', [
    {'reparam': 'wesar'},
    {'reparam': 'sigma_reparam', 'init_config': INITS['sigma_reparam'], 'no_bias': False,
     'attn_config': {'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf', 'fused_qkv': False},
     'ffn_config': {'ffn_type': 'mptglu'}},
    {'reparam': 'weight_norm', 'init_config': INITS['weight_norm'], 'no_bias': False,
     'attn_config': {'attn_impl': 'torch', 'alibi': True}},
    {'reparam': 'wesar', 'init_config': {'name': 'wesar_', 'sigma2': 'auto', 'lr': 1e-2}},
    {'reparam': 'multipliers', 'no_bias': False},
    {'reparam': 'multipliers', 'multipliers': 'column', 'attn_config': {'attn_impl': 'torch', 'rope': True,
                                                                       'rope_impl': 'hf', 'fused_qkv': False},
     'ffn_config': {'ffn_type': 'mptglu'}},
], ids=['wesar-fused-mlp', 'sigma_reparam-unfused-glu-bias', 'weight_norm-alibi-bias', 'wesar-sigma-auto',
        'multipliers-fused-bias', 'multipliers-column-unfused-glu'])
def test_the_merged_stock_mpt_computes_what_the_gated_model_computes(layout):
    model = build(**layout).model
    with torch.no_grad():
        for name, p in model.named_parameters():  # move gates and biases off their init values
            p.mul_(1.0 + 0.1 * torch.randn_like(p)).add_(0.01 if name.endswith('bias') else 0.0)
    model.train()(input_ids=INPUT_IDS)  # a training step of σReparam's power iteration
    model.eval()
    with torch.no_grad():
        want = model(input_ids=INPUT_IDS).logits
        stock = to_stock(model)
        got = stock(input_ids=INPUT_IDS).logits
    assert type(stock) is MPTForCausalLM and stock.config.model_type == 'mpt'
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_multipliers_mpt_exports_a_folder_that_loads_in_a_clean_process_with_the_trained_logits(tmp_path):
    torch.manual_seed(0)
    model = trained_with_spread_multipliers(build(reparam='multipliers', no_bias=False), range(30, 32))
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS).logits
    folder = export_model(model, tmp_path / 'out', dtype='fp32')
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_type'] == 'mpt' and not {'reparam', 'multipliers'} & set(config)
    assert not [k for k in load_file(folder / 'model.safetensors') if k.endswith(('.alpha', '.row_mult', '.col_mult'))]
    loaded = load_in_clean_process(folder, tmp_path / 'loader')
    assert (loaded['class'], loaded['model_type'], loaded['ours']) == ('MPTForCausalLM', 'mpt', [])
    torch.testing.assert_close(loaded['logits'], logits, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# `wesar-foundry export` of a wesar_mpt Composer checkpoint
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_command_exports_a_checkpoint_that_loads_in_a_clean_process_with_the_trained_logits(exported):
    loaded = exported['loaded']
    assert (loaded['class'], loaded['model_type']) == ('MPTForCausalLM', 'mpt')
    torch.testing.assert_close(loaded['logits'], exported['logits'], rtol=1e-5, atol=1e-6)
    assert loaded['ours'] == []


@pytest.mark.slow
def test_the_command_writes_the_folder_hf_checkpointer_writes(exported, run):
    ours, callbacks = exported['dirs']['monolithic'], run['folder']
    assert listing(ours) == listing(callbacks)  # config, weights, tokenizer, MPT's code with its flattened imports
    config, reference = (json.loads((f / 'config.json').read_text()) for f in (ours, callbacks))
    for key in ('model_type', 'architectures', 'auto_map', 'init_config', 'tie_word_embeddings', 'torch_dtype'):
        assert config[key] == reference[key], key
    assert config['attn_config']['attn_impl'] == 'torch' and 'reparam' not in config
    assert not any('from llmfoundry' in p.read_text() for p in ours.glob('*.py'))


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['monolithic-save-folder', 'sharded', 'sharded-save-folder'])
def test_every_kind_of_checkpoint_exports_the_same_folder(exported, kind):
    want, got = exported['dirs']['monolithic'], exported['dirs'][kind]
    assert listing(got) == listing(want)
    weights, reference = load_file(got / 'model.safetensors'), load_file(want / 'model.safetensors')
    assert reference and weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    # The same code, line for line: llm-foundry's edit_files_for_hf_compatibility inserts its
    # relative imports in set order, which can differ from one export to the next in a process.
    assert all(sorted((got / p.name).read_text().splitlines()) == sorted(p.read_text().splitlines())
               for p in want.glob('*.py'))
