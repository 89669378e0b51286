"""Reading monolithic Composer checkpoints through ``wesar-foundry export``: a save folder stands for
its ``latest-rank0.pt``, bad input fails cleanly before any output, and the source is never touched.
(Sharded checkpoints: test_checkpoint_sharded.py.)"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from tests.export.helpers import save_composer_checkpoint, spread_multipliers
from tests.helpers import adam_steps, batch, build_model
from wesar_foundry.commands.cli import main as cli


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('ckpts')
    torch.manual_seed(0)
    ours = save_composer_checkpoint(build_model(), root / 'ours.pt')
    from composer.models import HuggingFaceModel
    from transformers import LlamaConfig, LlamaForCausalLM
    stock = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=64))
    stock = save_composer_checkpoint(HuggingFaceModel(stock, use_logits=True), root / 'stock.pt')
    truncated = root / 'truncated.pt'
    data = ours.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    plain = root / 'plain.pt'
    torch.save({'weights': torch.zeros(3)}, plain)
    edited = root / 'edited.pt'
    ck = torch.load(ours, weights_only=False)
    del ck['state']['model']['model.model.layers.1.mlp.down_proj.weight']
    torch.save(ck, edited)
    # No builder writes a tied config: one edited by hand.
    tied = root / 'tied.pt'
    ck = torch.load(ours, weights_only=False)
    ck['state']['integrations']['huggingface']['model']['config']['content']['tie_word_embeddings'] = True
    torch.save(ck, tied)
    return {p.stem: p for p in (ours, tied, stock, truncated, plain, edited)}


@pytest.mark.parametrize('name,message', [
    ('truncated', 'cannot be read as a Composer checkpoint'),
    ('plain', 'is not a Composer checkpoint'),
    ('stock', "not a wesar-foundry checkpoint: its model_type is 'llama'"),
    ('edited', r"do not match.*missing \['model.layers.1.mlp.down_proj.weight'\]"),
    ('tied', 'config with tie_word_embeddings=True: no wesar-foundry model is built tied'),
])
def test_bad_checkpoint_gives_a_clear_error_and_no_output(checkpoints, tmp_path, capsys, name, message):
    source = checkpoints[name]
    before = sha(source)
    assert cli(['export', str(source), str(tmp_path / 'out')]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert listing(tmp_path) == []  # neither the output nor a staging folder
    assert sha(source) == before


def test_export_command_writes_a_complete_folder_and_leaves_the_source_alone(checkpoints, tmp_path, capsys):
    source = checkpoints['ours']
    before = sha(source)
    assert cli(['export', str(source), str(tmp_path / 'out')]) == 0
    assert f'wrote a stock LlamaForCausalLM checkpoint (gates merged) to {tmp_path / "out"}' in capsys.readouterr().out
    assert {'config.json', 'model.safetensors', 'generation_config.json'} <= set(listing(tmp_path / 'out'))
    # A second export to the same folder is refused without --force, accepted with it.
    assert cli(['export', str(source), str(tmp_path / 'out')]) == 2
    assert 'already exists' in capsys.readouterr().err
    assert cli(['export', str(source), str(tmp_path / 'out'), '--force', '--dtype', 'fp16']) == 0
    assert json.loads((tmp_path / 'out' / 'config.json').read_text())['torch_dtype'] == 'float16'
    assert listing(tmp_path) == ['out']
    assert sha(source) == before


def test_export_never_writes_over_its_own_source(checkpoints, tmp_path, capsys):
    source = tmp_path / 'ck.pt'
    source.write_bytes(checkpoints['ours'].read_bytes())
    assert cli(['export', str(source), str(source), '--force']) == 2
    assert 'is or contains the source checkpoint' in capsys.readouterr().err
    assert cli(['export', str(source), str(tmp_path), '--force']) == 2
    assert source.exists() and sha(source) == sha(checkpoints['ours'])


def test_export_of_a_directory_that_holds_no_checkpoint_says_what_export_reads(tmp_path, capsys):
    (tmp_path / 'ba10').mkdir()
    assert cli(['export', str(tmp_path / 'ba10'), str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert re.search(r'neither a sharded Composer checkpoint \(no \.metadata in it\) nor a save folder.*'
                     r'a sharded checkpoint folder.*or a monolithic Composer checkpoint file', err)
    assert not (tmp_path / 'out').exists()


def test_a_save_folder_of_monolithic_checkpoints_stands_for_its_latest_rank0_link(checkpoints, tmp_path):
    folder = tmp_path / 'save_folder'
    folder.mkdir()
    (folder / 'ep0-ba4-rank0.pt').write_bytes(checkpoints['ours'].read_bytes())
    (folder / 'latest-rank0.pt').symlink_to('ep0-ba4-rank0.pt')
    assert cli(['export', str(folder), str(tmp_path / 'via-link')]) == 0
    assert cli(['export', str(checkpoints['ours']), str(tmp_path / 'direct')]) == 0
    assert sha(tmp_path / 'via-link' / 'model.safetensors') == sha(tmp_path / 'direct' / 'model.safetensors')


def test_a_multipliers_checkpoint_is_rebuilt_from_its_config_and_exports_its_trained_function(tmp_path):
    """The saved HF config carries ``multipliers``: the export rebuilds the model with its vectors
    (else the state dict would not load) and the stock Llama computes the trained logits."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    composer_model = build_model(reparam='multipliers', multipliers='row')
    spread_multipliers(composer_model.model)
    adam_steps(composer_model, range(2))
    source = save_composer_checkpoint(composer_model, tmp_path / 'ck.pt')
    assert cli(['export', str(source), str(tmp_path / 'out')]) == 0
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['model_type'] == 'llama' and not {'reparam', 'multipliers'} & set(config)
    stock = LlamaForCausalLM.from_pretrained(tmp_path / 'out', torch_dtype=torch.float32).eval()
    ids = batch(seed=5)['input_ids']
    with torch.no_grad():
        want = composer_model.model.eval()(input_ids=ids).logits
        torch.testing.assert_close(stock(input_ids=ids).logits, want, rtol=0, atol=1e-5)
