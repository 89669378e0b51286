"""``MergingCheckpointer`` (``wesar_hf_checkpointer``, ``wesar_mpt_hf_checkpointer``) in llm-foundry's
own ``train()``, and the round trip train → Composer checkpoint → ``wesar-foundry export`` → plain
transformers → same logits. (MPT's run: tests/foundry/mpt/test_mpt_adapter.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from llmfoundry.command_utils import train
from safetensors.torch import load_file

from tests.helpers import TINY_MODEL, batch
from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.commands.cli import main as cli
from wesar_foundry.export import merged_state_dict
from wesar_foundry.foundry.callbacks.checkpointer import (
    MergingCheckpointer, WeSaRHuggingFaceCheckpointer, WeSaRMPTHuggingFaceCheckpointer,
)

TINY_YAML = Path(__file__).resolve().parents[3] / 'yamls' / 'tiny' / 'wesar.yaml'
INPUT_IDS = batch(seq=24, seed=3)['input_ids']

# Two runs: the paper's model, and σReparam (stored singular vectors) with SwiGLU and a bf16 export.
RUNS = {
    'wesar-gelu': ({'reparam': 'wesar', 'mlp_type': 'gelu'}, None),
    'sigma_reparam-swiglu': ({'reparam': 'sigma_reparam', 'mlp_type': 'swiglu'}, 'bfloat16'),
}


@pytest.fixture(scope='module')
def runs(tiny_data, tmp_path_factory):
    """Each run: 10 batches of train(), a Composer checkpoint at ba10, the callback's exports at
    ba5 and ba10; then the Composer checkpoint exported by the command. One loader subprocess."""
    root = tmp_path_factory.mktemp('runs')
    out, dirs = {}, {}
    for name, (model_kwargs, precision) in RUNS.items():
        folder = root / name
        cfg = OmegaConf.load(TINY_YAML)
        cfg.variables.data_local = str(tiny_data)
        cfg.variables.max_seq_len = TINY_MODEL['max_seq_len']
        cfg.model.update({**TINY_MODEL, **model_kwargs})
        cfg.callbacks, cfg.loggers = {}, {}  # only this test's callback and logger
        callback = {'save_folder': str(folder / 'hf'), 'save_interval': '5ba'}
        if precision:
            callback['precision'] = precision
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([
            'max_duration=10ba', 'eval_interval=10ba', 'eval_subset_num_batches=1', 'global_train_batch_size=8',
            'device_train_batch_size=8', 'device_train_microbatch_size=8', 'device_eval_batch_size=8',
            'console_log_interval=100ba', 'scheduler.t_warmup=2ba', 'optimizer.lr=3e-3', f'run_name={name}',
            'loggers={inmemory: {}}', f'save_folder={folder / "ckpt"}', 'save_interval=10ba',
        ]), {'callbacks': {'wesar_hf_checkpointer': callback}})
        trainer = train(cfg)
        model = trainer.state.model.model.eval()
        with torch.no_grad():
            logits = model(input_ids=INPUT_IDS).logits
        checkpoint = folder / 'ckpt' / 'ep0-ba10-rank0.pt'
        assert cli(['export', str(checkpoint), str(folder / 'exported')]) == 0
        out[name] = {'folder': folder, 'logits': logits, 'trainer': trainer, 'checkpoint': checkpoint}
        hf = folder / 'hf' / 'huggingface'
        dirs.update({f'{name}/ba5': hf / 'ba5', f'{name}/ba10': hf / 'ba10', f'{name}/exported': folder / 'exported'})
    loaded = load_with_stock_transformers(dirs, INPUT_IDS, root / 'loader')
    return {'runs': out, 'loaded': loaded, 'dirs': dirs}


def test_the_callback_is_registered_for_yamls():
    from llmfoundry.registry import callbacks
    assert callbacks.get('wesar_hf_checkpointer') is WeSaRHuggingFaceCheckpointer


def test_both_names_are_the_one_merging_checkpointer_under_the_name_their_errors_give():
    from llmfoundry.registry import callbacks
    registered = {name: callbacks.get(name) for name in ('wesar_hf_checkpointer', 'wesar_mpt_hf_checkpointer')}
    assert registered['wesar_mpt_hf_checkpointer'] is WeSaRMPTHuggingFaceCheckpointer
    for name, cls in registered.items():
        assert cls.__mro__[1] is MergingCheckpointer and cls.name == name
        assert not [k for k, v in vars(cls).items() if callable(v)]  # no behaviour of its own, only its name
        with pytest.raises(ValueError, match=rf"{name}.precision='fp8'"):
            cls(save_folder='unused', save_interval='1ba', precision='fp8')


def test_a_model_that_is_not_gated_is_refused_naming_the_families():
    from transformers import LlamaConfig, LlamaForCausalLM
    stock = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=64))
    checkpointer = WeSaRMPTHuggingFaceCheckpointer(save_folder='unused', save_interval='1ba')
    with pytest.raises(ValueError, match=r"wesar_mpt_hf_checkpointer: expected a gated model \(wesar_llama, wesar_hf, "
                                         r"wesar_mpt\), got LlamaForCausalLM; use llm-foundry's hf_checkpointer"):
        checkpointer.check_model(stock)


@pytest.mark.slow
def test_round_trip_train_checkpoint_export_load_gives_the_same_logits(runs):
    assert runs['runs'].keys() == RUNS.keys()
    for name, run in runs['runs'].items():
        got = runs['loaded'][f'{name}/exported']
        assert (got['class'], got['model_type']) == ('LlamaForCausalLM', 'llama')
        torch.testing.assert_close(got['logits'], run['logits'], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_the_callback_writes_stock_llama_checkpoints_during_and_at_the_end_of_training(runs):
    run = runs['runs']['wesar-gelu']
    for step in ('ba5', 'ba10'):
        got = runs['loaded'][f'wesar-gelu/{step}']
        assert (got['class'], got['model_type']) == ('LlamaForCausalLM', 'llama')
    # The end-of-training export is the trained model; the one at ba5 is an earlier state of it.
    torch.testing.assert_close(runs['loaded']['wesar-gelu/ba10']['logits'], run['logits'], rtol=0, atol=1e-5)
    assert not torch.allclose(runs['loaded']['wesar-gelu/ba5']['logits'], run['logits'], atol=1e-3)


@pytest.mark.slow
def test_the_callback_saves_the_tokenizer_and_its_special_token_ids(runs):
    run = runs['runs']['wesar-gelu']
    tokenizer = run['trainer'].state.model.tokenizer
    for folder in (runs['dirs']['wesar-gelu/ba10'], runs['dirs']['wesar-gelu/exported']):
        assert (folder / 'tokenizer.json').is_file()
        config = json.loads((folder / 'config.json').read_text())
        assert (config['eos_token_id'], config['pad_token_id']) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


@pytest.mark.slow
def test_the_callback_precision_is_a_single_cast_of_the_fp32_merge(runs):
    run = runs['runs']['sigma_reparam-swiglu']
    weights = load_file(runs['dirs']['sigma_reparam-swiglu/ba10'] / 'model.safetensors')
    fp32 = merged_state_dict(run['trainer'].state.model.model)
    assert fp32 and {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert all(torch.equal(weights[k], v.to(torch.bfloat16)) for k, v in fp32.items())
    # Without `precision`, the training dtype (fp32 here); the command defaults to it too.
    for key in ('wesar-gelu/ba10', 'sigma_reparam-swiglu/exported'):
        assert json.loads((runs['dirs'][key] / 'config.json').read_text())['torch_dtype'] == 'float32'
    torch.testing.assert_close(runs['loaded']['sigma_reparam-swiglu/ba10']['logits'], run['logits'], rtol=0, atol=0.1)


@pytest.mark.slow
def test_exported_model_generates_deterministically_with_greedy_decoding(runs):
    for key in ('wesar-gelu/exported', 'sigma_reparam-swiglu/exported'):
        first, second = runs['loaded'][key]['generated']
        assert torch.equal(first, second) and first.shape[1] == 4 + 8


@pytest.mark.slow
def test_the_loader_process_imported_nothing_of_ours(runs):
    assert runs['loaded']['_our_modules'] == []


def test_a_tied_model_it_could_not_export_is_refused_before_training(train_cfg, tmp_path):
    cfg = train_cfg(f'callbacks.wesar_hf_checkpointer.save_folder={tmp_path / "hf"}',
                    'callbacks.wesar_hf_checkpointer.save_interval=5ba', reparam='none', tie_word_embeddings=True)
    with pytest.raises(ValueError, match='tie_word_embeddings=True is not allowed .*could never be exported'):
        train(cfg)
    assert not (tmp_path / 'hf' / 'huggingface').exists()


def test_the_callback_checks_its_precision_by_name():
    with pytest.raises(ValueError, match=r"precision='fp8'.*allowed: fp32, bf16, fp16"):
        WeSaRHuggingFaceCheckpointer(save_folder='unused', save_interval='1ba', precision='fp8')
