"""Export: a wesar_llama model merges into a stock Llama checkpoint that plain transformers loads
and that computes the same logits; bad input fails cleanly and loses nothing."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import TINY_MODEL, batch, build_model, build_tied_model
from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.cli import main as cli
from wesar_foundry.export import export_model, merged_state_dict
from wesar_foundry.reparam import REPARAMS

MLP_TYPES = ('gelu', 'swiglu')
CASES = [(r, m) for r in REPARAMS for m in MLP_TYPES]
GATES = ('alpha', 'g', 'gamma')
INPUT_IDS = batch(seq=24, seed=1)['input_ids']
GENERATE = ('wesar-gelu-trained', 'sigma_reparam-swiglu-trained', 'none-gelu-trained')


def gains(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.rsplit('.', 1)[-1] in GATES}


def train_steps(composer_model, steps: int = 3) -> None:
    """A few Adam steps on the model's own loss (train mode: σReparam's power iteration runs too)."""
    opt = torch.optim.Adam(composer_model.parameters(), lr=1e-2)
    composer_model.train()
    for step in range(steps):
        b = batch(seed=10 + step)
        loss = composer_model.loss(composer_model(b), b)['total']
        opt.zero_grad()
        loss.backward()
        opt.step()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Every reparam × mlp_type after a few training steps (and the paper's model at init too),
    exported in fp32 and loaded by a single plain-transformers subprocess; with our eval-mode
    logits and greedy generations."""
    root = tmp_path_factory.mktemp('export')
    dirs, ours, generated, moved = {}, {}, {}, {}
    for reparam, mlp, trained in [(r, m, True) for r, m in CASES] + [('wesar', 'gelu', False)]:
        name = f'{reparam}-{mlp}-{"trained" if trained else "init"}'
        torch.manual_seed(0)
        cm = build_model(reparam=reparam, mlp_type=mlp)
        before = gains(cm.model)
        if trained:
            train_steps(cm)
        moved[name] = all(not torch.equal(before[k], v) for k, v in gains(cm.model).items())
        model = cm.model.eval()
        with torch.no_grad():
            ours[name] = model(input_ids=INPUT_IDS).logits
        if name in GENERATE:
            generated[name] = model.generate(INPUT_IDS[:, :4], attention_mask=torch.ones_like(INPUT_IDS[:, :4]),
                                             max_new_tokens=8, min_new_tokens=8, do_sample=False)
        dirs[name] = export_model(model, root / name, dtype='fp32')
    # A tied model whose embedding and head use the same effective weight exports tied.
    torch.manual_seed(0)
    tied = build_tied_model(reparam='none').model.eval()
    tied.model.embed_tokens.scale = 1.0  # same gain as the head: one shared matrix is exact
    with torch.no_grad():
        ours['tied'] = tied(input_ids=INPUT_IDS).logits
    dirs['tied'] = export_model(tied, root / 'tied')
    loaded = load_with_stock_transformers(dirs, INPUT_IDS, root / 'loader')
    return {'dirs': dirs, 'ours': ours, 'generated': generated, 'moved': moved, 'loaded': loaded}


@pytest.mark.parametrize('reparam,mlp', CASES)
def test_stock_transformers_logits_equal_ours_in_fp32_after_training(exported, reparam, mlp):
    name = f'{reparam}-{mlp}-trained'
    got = exported['loaded'][name]
    assert (got['class'], got['model_type']) == ('LlamaForCausalLM', 'llama')
    torch.testing.assert_close(got['logits'], exported['ours'][name], rtol=0, atol=1e-5)


def test_stock_transformers_logits_equal_ours_at_init(exported):
    got = exported['loaded']['wesar-gelu-init']
    assert (got['class'], got['model_type']) == ('LlamaForCausalLM', 'llama')
    torch.testing.assert_close(got['logits'], exported['ours']['wesar-gelu-init'], rtol=0, atol=1e-5)


def test_training_steps_moved_every_gate(exported):
    # Otherwise the "trained" cases would not test the merge of learned gates (vacuous for the
    # gate-less reparams none and residual_scaling, whose weights moved instead).
    trained = [n for n in exported['moved'] if n.endswith('-trained')]
    assert len(trained) == len(CASES) and all(exported['moved'][n] for n in trained)


def test_the_loader_process_imported_nothing_of_ours(exported):
    assert exported['loaded']['_our_modules'] == []


def test_greedy_generate_runs_is_deterministic_and_matches_ours(exported):
    for name in GENERATE:
        first, second = exported['loaded'][name]['generated']
        assert first.shape == (INPUT_IDS.shape[0], 4 + 8)
        assert torch.equal(first, second)
        assert torch.equal(first, exported['generated'][name])


def test_tied_model_with_equal_gains_exports_tied(exported):
    config = json.loads((exported['dirs']['tied'] / 'config.json').read_text())
    assert config['tie_word_embeddings'] is True
    torch.testing.assert_close(exported['loaded']['tied']['logits'], exported['ours']['tied'], rtol=0, atol=1e-5)


def test_gelu_mlp_is_llamas_gated_mlp_with_a_constant_one_up_proj(exported):
    folder = exported['dirs']['wesar-gelu-trained']
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_type'] == 'llama' and config['architectures'] == ['LlamaForCausalLM']
    assert (config['hidden_act'], config['mlp_bias'], config['attention_bias']) == ('gelu', True, False)
    assert not any(k in config for k in ('reparam', 'mlp_type', 'sigma2', 'sigma_choice', 'init_target'))
    weights = load_file(folder / 'model.safetensors')
    assert all(t.dtype == torch.float32 for t in weights.values())
    mlp = 'model.layers.1.mlp.'
    assert torch.count_nonzero(weights[mlp + 'up_proj.weight']) == 0
    assert torch.equal(weights[mlp + 'up_proj.bias'], torch.ones(TINY_MODEL['d_model'] * 4))
    assert torch.count_nonzero(weights[mlp + 'gate_proj.bias']) == 0
    assert torch.count_nonzero(weights[mlp + 'down_proj.bias']) == 0
    assert not any(k.endswith(('.alpha', '.g', '.gamma', '.u', '.v')) or 'self_attn' in k and k.endswith('bias')
                   for k in weights)


def test_swiglu_exports_without_biases(exported):
    config = json.loads((exported['dirs']['wesar-swiglu-trained'] / 'config.json').read_text())
    assert (config['hidden_act'], config['mlp_bias']) == ('silu', False)
    assert not any(k.endswith('bias') for k in load_file(exported['dirs']['wesar-swiglu-trained'] / 'model.safetensors'))


def test_bf16_export_is_one_cast_of_the_fp32_merge(tmp_path):
    torch.manual_seed(0)
    model = build_model(reparam='wesar').model.eval()
    folder = export_model(model, tmp_path / 'bf16', dtype='bf16')
    weights = load_file(folder / 'model.safetensors')
    fp32 = merged_state_dict(model)
    assert set(weights) == set(fp32)
    for key, value in fp32.items():
        assert weights[key].dtype == torch.bfloat16
        assert torch.equal(weights[key], value.to(torch.bfloat16)), key
    assert json.loads((folder / 'config.json').read_text())['torch_dtype'] == 'bfloat16'


def test_tied_embedding_with_different_gains_is_refused_with_an_explanation(tmp_path):
    # reparam none: the embedding output is scaled by 1/σ_e (√d = 5.65685 for He at d=32), the head
    # is not; they share one matrix.
    model = build_tied_model(reparam='none').model.eval()
    with pytest.raises(ValueError, match=r'tie_word_embeddings=True.*gains differ.*embedding gain 5\.65685.*head gain 1'):
        export_model(model, tmp_path / 'out')
    assert listing(tmp_path) == []


def test_existing_output_dir_is_kept_without_force_and_replaced_with_it(tmp_path):
    model = build_model().model.eval()
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('precious')
    with pytest.raises(FileExistsError, match='already exists.*--force'):
        export_model(model, out)
    assert listing(out) == ['keep.txt']
    export_model(model, out, force=True)
    assert 'keep.txt' not in listing(out) and 'model.safetensors' in listing(out)
    assert listing(tmp_path) == ['out']  # no staging or trash folder left behind


def test_dtype_is_checked_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"--dtype='fp8'.*allowed: fp32, bf16, fp16"):
        export_model(build_model().model, tmp_path / 'out', dtype='fp8')


# ---------------------------------------------------------------------------------------------
# `wesar-foundry export` on Composer checkpoints: bad input, nothing lost
# ---------------------------------------------------------------------------------------------

def save_composer_checkpoint(composer_model, path: Path) -> Path:
    """A real Composer checkpoint of ``composer_model`` (no training needed to save one)."""
    from composer import Trainer
    trainer = Trainer(model=composer_model, device='cpu', precision='fp32', progress_bar=False)
    trainer.save_checkpoint(str(path))
    trainer.close()
    return path


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('ckpts')
    torch.manual_seed(0)
    ours = save_composer_checkpoint(build_model(), root / 'ours.pt')
    tied = save_composer_checkpoint(build_tied_model(reparam='none'), root / 'tied.pt')
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
    return {p.stem: p for p in (ours, tied, stock, truncated, plain, edited)}


@pytest.mark.parametrize('name,message', [
    ('truncated', 'cannot be read as a Composer checkpoint'),
    ('plain', 'is not a Composer checkpoint'),
    ('stock', "not a wesar-foundry checkpoint: its model_type is 'llama'"),
    ('edited', r"do not match.*missing \['model.layers.1.mlp.down_proj.weight'\]"),
    ('tied', 'tie_word_embeddings=True whose embedding and LM head gains differ'),
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
    # Sharded checkpoints are folders: tests/test_export_sharded.py.
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
