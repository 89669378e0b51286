"""Reading sharded Composer checkpoints (FSDP's ``state_dict_type: sharded``) through ``wesar-foundry
export``: consolidated on CPU in one process, a save folder standing for its latest, the optimizer
never read, incomplete or damaged saves refused.

The checkpoints here are written in one process the way Composer writes them under FSDP
(``tests/export/helpers.py: save_sharded``). A real two-rank FSDP2 checkpoint is exported in
``tests/distributed/test_export_sharded.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from tests.export.helpers import save_sharded
from tests.helpers import adam_steps, batch, build_model
from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.commands.cli import main as cli

INPUT_IDS = batch(seq=24, seed=5)['input_ids']
# The paper's model, and σReparam (stored singular vectors: buffers) with SwiGLU.
CASES = {'wesar-gelu': {'reparam': 'wesar', 'mlp_type': 'gelu'},
         'sigma_reparam-swiglu': {'reparam': 'sigma_reparam', 'mlp_type': 'swiglu'}}
OPTIMIZER_PREFIX = 'state.optimizers.'


def train_and_save(model_kwargs: dict, tokenizer, save_folder: Path) -> dict:
    """Adam steps on a tiny model; sharded checkpoints at ba2 and ba4 with Composer's names and its
    ``latest-sharded-rank0`` link; the eval-mode logits of the final model."""
    from composer import Trainer
    torch.manual_seed(0)
    composer_model = build_model(tokenizer=tokenizer, **model_kwargs)
    optimizer = torch.optim.Adam(composer_model.parameters(), lr=1e-2)
    trainer = Trainer(model=composer_model, optimizers=optimizer, device='cpu', precision='fp32', progress_bar=False)
    for step in (2, 4):
        adam_steps(composer_model, (20 + step - 1, 20 + step), optimizer)
        save_sharded(trainer, save_folder / f'ep0-ba{step}')
    (save_folder / 'latest-sharded-rank0').symlink_to('ep0-ba4')
    trainer.close()
    model = composer_model.model.eval()
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS).logits
    return {'save_folder': save_folder, 'logits': logits}


@pytest.fixture(scope='module')
def tokenizer(tiny_data):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_data / 'tokenizer')


@pytest.fixture(scope='module')
def sharded(tokenizer, tmp_path_factory):
    """Per case: a save folder of sharded checkpoints, the trained model's logits, and the latest
    checkpoint exported by the command from the save folder, the ba4 folder, and the ba4 folder in
    100 KB shards; all loaded by one plain-transformers subprocess."""
    root = tmp_path_factory.mktemp('sharded')
    runs, dirs = {}, {}
    for name, kwargs in CASES.items():
        run = train_and_save(kwargs, tokenizer, root / name / 'ckpt')
        latest = run['save_folder'] / 'ep0-ba4'
        exports = {'from-save-folder': [str(run['save_folder'])], 'from-checkpoint': [str(latest)],
                   'small-shards': [str(latest), '--max-shard-size', '100KB']}
        for kind, args in exports.items():
            out = root / name / kind
            assert cli(['export', args[0], str(out), *args[1:]]) == 0
            dirs[f'{name}/{kind}'] = out
        runs[name] = run
    loaded = load_with_stock_transformers(dirs, INPUT_IDS, root / 'loader')
    return {'runs': runs, 'dirs': dirs, 'loaded': loaded}


@pytest.mark.slow
def test_the_checkpoint_has_composers_sharded_layout(sharded):
    folder = sharded['runs']['wesar-gelu']['save_folder'] / 'ep0-ba4'
    assert sorted(p.name for p in folder.iterdir()) == ['.metadata', '__0_0.distcp']
    keys = set(dcp.FileSystemReader(folder).read_metadata().state_dict_metadata)
    assert 'state.model.model.model.layers.1.mlp.down_proj.alpha' in keys
    assert 'state.optimizers.Adam.state.model.model.layers.1.mlp.down_proj.weight.exp_avg' in keys
    assert 'state.integrations.huggingface.model.config.content.model_type' in keys


@pytest.mark.slow
@pytest.mark.parametrize('name', CASES)
def test_stock_transformers_logits_equal_the_trained_models(sharded, name):
    for kind in ('from-save-folder', 'from-checkpoint', 'small-shards'):
        got = sharded['loaded'][f'{name}/{kind}']
        assert (got['class'], got['model_type']) == ('LlamaForCausalLM', 'llama')
        torch.testing.assert_close(got['logits'], sharded['runs'][name]['logits'], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_save_folder_stands_for_its_latest_sharded_checkpoint(sharded):
    dirs = sharded['dirs']
    via_link = load_file(dirs['wesar-gelu/from-save-folder'] / 'model.safetensors')
    direct = load_file(dirs['wesar-gelu/from-checkpoint'] / 'model.safetensors')
    assert via_link.keys() == direct.keys() and all(torch.equal(via_link[k], direct[k]) for k in direct)


@pytest.mark.slow
def test_max_shard_size_bounds_every_weight_file(sharded):
    folder = sharded['dirs']['wesar-gelu/small-shards']
    index = json.loads((folder / 'model.safetensors.index.json').read_text())
    files = sorted(set(index['weight_map'].values()))
    assert len(files) > 1 and not (folder / 'model.safetensors').exists()
    # Bounded except where one tensor alone is larger (the 512 x 32 fp32 embedding is 64 KiB: none is).
    assert all((folder / f).stat().st_size <= 100_000 + 10_000 for f in files)  # + the JSON header


@pytest.mark.slow
def test_the_tokenizer_and_its_special_ids_come_from_the_checkpoint(sharded, tokenizer):
    folder = sharded['dirs']['wesar-gelu/from-save-folder']
    from transformers import AutoTokenizer
    exported = AutoTokenizer.from_pretrained(folder)
    text = 'Return the sum of a and b.'
    assert exported(text)['input_ids'] == tokenizer(text)['input_ids']
    config = json.loads((folder / 'config.json').read_text())
    assert config['eos_token_id'] == tokenizer.eos_token_id
    assert config['torch_dtype'] == 'float32'  # the training precision recorded in state.metadata


@pytest.mark.slow
def test_the_loader_process_imported_nothing_of_ours(sharded):
    assert sharded['loaded']['_our_modules'] == []


# ---------------------------------------------------------------------------------------------
# What is read, and what is refused
# ---------------------------------------------------------------------------------------------

def overwrite_values(folder: Path, prefix: str) -> int:
    """Overwrite with 0xFF the stored bytes of every value whose key starts with ``prefix``; how many."""
    metadata = dcp.FileSystemReader(folder).read_metadata()
    items = [(index, info) for index, info in metadata.storage_data.items() if index.fqn.startswith(prefix)]
    for _, info in items:
        with open(folder / info.relative_path, 'r+b') as f:
            f.seek(info.offset)
            f.write(b'\xff' * info.length)
    return len(items)


@pytest.mark.slow
def test_the_optimizer_state_is_never_read(sharded, tmp_path):
    source = sharded['runs']['wesar-gelu']['save_folder'] / 'ep0-ba4'
    folder = shutil.copytree(source, tmp_path / 'ep0-ba4')
    assert overwrite_values(folder, OPTIMIZER_PREFIX) > 0
    assert cli(['export', str(folder), str(tmp_path / 'out')]) == 0
    got = load_file(tmp_path / 'out' / 'model.safetensors')
    want = load_file(sharded['dirs']['wesar-gelu/from-checkpoint'] / 'model.safetensors')
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_damaged_model_bytes_are_reported_not_exported(sharded, tmp_path, capsys):
    # The check above would pass vacuously if damaged bytes went unnoticed: they do not.
    source = sharded['runs']['wesar-gelu']['save_folder'] / 'ep0-ba4'
    folder = shutil.copytree(source, tmp_path / 'ep0-ba4')
    assert overwrite_values(folder, 'state.model.model.lm_head.weight') == 1
    assert cli(['export', str(folder), str(tmp_path / 'out')]) == 2
    assert 'the model weights cannot be read' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_damaged_metadata_is_reported_not_exported(sharded, tmp_path, capsys):
    folder = shutil.copytree(sharded['runs']['wesar-gelu']['save_folder'] / 'ep0-ba4', tmp_path / 'ep0-ba4')
    metadata = folder / '.metadata'
    metadata.write_bytes(metadata.read_bytes()[:100])
    assert cli(['export', str(folder), str(tmp_path / 'out')]) == 2
    assert 'cannot be read as torch.distributed.checkpoint metadata (truncated or corrupt?)' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_the_default_dtype_is_the_training_precision_the_checkpoint_records(tmp_path):
    from composer import Trainer
    from composer.utils import reproducibility
    trainer = Trainer(model=build_model(), device='cpu', precision='fp32', progress_bar=False)
    state_dict = {'state': trainer.state.state_dict(), 'rng': reproducibility.get_rng_state()}
    trainer.close()
    # What a bf16 mixed-precision run records (Composer refuses amp_bf16 on CPU, so written here).
    state_dict['state']['metadata']['precision'] = 'amp_bf16'
    dcp.save(state_dict, storage_writer=dcp.FileSystemWriter(tmp_path / 'ep0-ba1'))
    assert cli(['export', str(tmp_path / 'ep0-ba1'), str(tmp_path / 'out')]) == 0
    assert json.loads((tmp_path / 'out' / 'config.json').read_text())['torch_dtype'] == 'bfloat16'
    assert {t.dtype for t in load_file(tmp_path / 'out' / 'model.safetensors').values()} == {torch.bfloat16}


def incomplete_save_folder(sharded, tmp_path: Path, latest: str) -> Path:
    """A copy of a save folder whose ep0-ba4 lost its .metadata (a save killed before the end)."""
    folder = shutil.copytree(sharded['runs']['wesar-gelu']['save_folder'], tmp_path / 'ckpt', symlinks=True)
    (folder / 'ep0-ba4' / '.metadata').unlink()
    (folder / 'latest-sharded-rank0').unlink()
    if latest:
        (folder / 'latest-sharded-rank0').symlink_to(latest)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize('given,latest', [
    ('ep0-ba4', 'ep0-ba4'),  # the folder itself
    ('.', 'ep0-ba4'),        # the save folder, its link on the incomplete one
])
def test_an_incomplete_sharded_checkpoint_is_refused_naming_the_complete_ones(sharded, tmp_path, capsys, given, latest):
    folder = incomplete_save_folder(sharded, tmp_path, latest)
    assert cli(['export', str(folder / given), str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert re.search(r'ep0-ba4 is an incomplete sharded checkpoint: it has no \.metadata.*'
                     r'export an earlier checkpoint \(complete checkpoints here: ep0-ba2\)', err)
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_a_save_folder_without_its_latest_link_is_refused_naming_the_complete_checkpoints(sharded, tmp_path, capsys):
    folder = incomplete_save_folder(sharded, tmp_path, latest='')
    assert cli(['export', str(folder), str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert re.search(r'neither a sharded Composer checkpoint.*nor a save folder with a latest-sharded-rank0 or '
                     r'latest-rank0.pt link.*\(complete checkpoints here: ep0-ba2\)', err)


@pytest.mark.slow
def test_export_never_writes_over_the_save_folder_it_reads(sharded, tmp_path, capsys):
    folder = shutil.copytree(sharded['runs']['wesar-gelu']['save_folder'], tmp_path / 'ckpt', symlinks=True)
    assert cli(['export', str(folder / 'ep0-ba4'), str(folder), '--force']) == 2
    assert 'is or contains the source checkpoint' in capsys.readouterr().err
    assert (folder / 'ep0-ba4' / '.metadata').is_file()
