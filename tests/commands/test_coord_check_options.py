"""``wesar-foundry coord-check`` before any training: what it refuses (naming the option), how it resizes
each family's model, and what it changes in the YAML (quick tier: nothing trains)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from wesar_foundry.commands.cli import main
from wesar_foundry.commands.coord_check import (
    PROBE, CoordCheckConfig, Shape, load_config, read_shape, resized_model, run_config,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'yamls' / 'tiny'


def refused(capsys, *args: str) -> str:
    """Run the command, which must fail before training (no output folder), and return its error."""
    assert main(['coord-check', '--out', 'never', *args]) == 2
    assert not Path('never').exists()
    return capsys.readouterr().err


@pytest.mark.parametrize('args, message', [
    (['--widths', '64'], r'--widths 64: give at least two different widths'),
    (['--widths', '64,64'], r'--widths 64,64: give at least two different widths'),
    (['--widths', '64,x'], r"--widths '64,x': expected comma-separated ints"),
    (['--widths', '0,64'], r'--widths 0,64: every width must be >= 1'),
    (['--steps', '1'], r'--steps 1: must be >= 2'),
    (['--depths', '0,2'], r'--depths 0,2: give different layer counts, each >= 1'),
    (['--tol', '0'], r'--tol 0.0: must be a number > 0'),
])
def test_bad_options_are_refused_naming_the_option(capsys, args, message):
    err = refused(capsys, *args, str(TINY / 'wesar.yaml'))
    assert 'wesar-foundry coord-check: error: ' + message in err


def test_a_width_smaller_than_the_head_dim_or_not_a_multiple_of_it_is_refused(capsys):
    # The tiny YAML: d 128, 4 heads → head dim 32.
    err = refused(capsys, '--widths', '16,64,128', str(TINY / 'wesar.yaml'))
    assert '--widths 16: smaller than the head dim 32' in err
    err = refused(capsys, '--widths', '48,64', str(TINY / 'wesar.yaml'))
    assert '--widths 48: not a multiple of the head dim 32' in err


def test_a_model_it_cannot_resize_is_refused_naming_the_allowed_ones(capsys):
    err = refused(capsys, str(TINY / 'mpt.yaml'))
    assert "model.name='wesar_mpt': coord-check resizes wesar_llama and wesar_hf models only" in err
    err = refused(capsys, str(TINY / 'wesar.yaml'), 'model.name=mpt_causal_lm')
    assert "model.name='mpt_causal_lm'" in err and 'allowed: wesar_llama, wesar_hf' in err


def test_a_missing_yaml_and_a_malformed_override_are_refused(capsys):
    assert 'nope.yaml: no such YAML file' in refused(capsys, 'nope.yaml')
    assert 'override(s) precision: expected key=value' in refused(capsys, str(TINY / 'wesar.yaml'), 'precision')


def test_wesar_llama_keeps_the_head_dim_and_sets_the_depth():
    shape = read_shape(load_config(CoordCheckConfig(str(TINY / 'wesar.yaml'))))
    assert shape == Shape('wesar_llama', 128, 4, 32)
    model = resized_model({'name': 'wesar_llama', 'd_model': 128, 'n_heads': 4, 'n_layers': 4, 'expansion_ratio': 4},
                          shape, 512, 8)
    assert (model['d_model'], model['n_heads'], model['n_layers'], model['expansion_ratio']) == (512, 16, 8, 4)
    assert resized_model({'d_model': 128, 'n_heads': 4}, shape, 32, 4)['n_heads'] == 1


def test_wesar_hf_scales_the_mlp_with_the_width_and_keeps_heads_per_kv_head():
    cfg = CoordCheckConfig(str(TINY / 'hf_llama.yaml'), overrides=[
        'model.config_overrides.num_key_value_heads=2', 'model.config_overrides.intermediate_size=352'])
    shape = read_shape(load_config(cfg))
    assert shape == Shape('wesar_hf', 128, 4, 32, heads_per_kv=2, intermediate=352, has_kv_heads=True)
    model = resized_model({'name': 'wesar_hf', 'config_overrides': {'hidden_size': 128, 'vocab_size': 4096}},
                          shape, 256, 6)
    assert model['config_overrides'] == {'hidden_size': 256, 'num_attention_heads': 8, 'num_key_value_heads': 4,
                                         'num_hidden_layers': 6, 'intermediate_size': 704, 'vocab_size': 4096}
    small = resized_model({'config_overrides': {}}, shape, 32, 4)['config_overrides']
    assert (small['num_attention_heads'], small['num_key_value_heads'], small['intermediate_size']) == (1, 1, 88)


def test_gpt_neox_has_no_kv_heads_to_set():
    shape = read_shape(load_config(CoordCheckConfig(str(TINY / 'hf_gpt_neox.yaml'))))
    assert not shape.has_kv_heads
    assert 'num_key_value_heads' not in resized_model({'config_overrides': {}}, shape, 64, 2)['config_overrides']


def test_each_run_trains_the_steps_at_a_constant_lr_with_the_monitor_and_probe_only_and_saves_nothing():
    cfg = CoordCheckConfig(str(TINY / 'wesar.yaml'), steps=7, seed=3, overrides=[
        'model.init_config.sigma2=auto', 'model.init_config.lr=${optimizer.lr}', 'optimizer.lr=3e-3'])
    train_cfg = load_config(cfg)
    run = OmegaConf.to_container(run_config(train_cfg, read_shape(train_cfg), 256, 2, cfg))
    assert (run['model']['d_model'], run['model']['n_heads'], run['model']['n_layers']) == (256, 8, 2)
    assert run['model']['init_config']['lr'] == 3e-3  # the YAML's interpolation, resolved
    assert (run['max_duration'], run['seed']) == ('7ba', 3)
    assert run['scheduler'] == {'name': 'constant_with_warmup', 't_warmup': '0ba'}
    assert run['callbacks'] == {'update_ratio_monitor': {'interval': 1, 'measure': 'both', 'per_matrix': 'none',
                                                         'history': 7}, PROBE: {}}
    assert run['loggers'] == {'inmemory': {}}
    assert not {'save_folder', 'save_interval', 'eval_loader', 'variables', 'load_path'} & set(run)
    assert run['train_loader'] == OmegaConf.to_container(train_cfg.train_loader, resolve=True)  # the YAML's data
    assert run['algorithms'] == {'gradient_clipping': {'clipping_type': 'norm', 'clipping_threshold': 1.0}}
