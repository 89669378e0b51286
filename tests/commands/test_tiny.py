"""The tiny CPU YAMLs are package data: ``configs`` writes them, a checkout's ``yamls/tiny`` is them,
and each one writes everything under ``runs/<run_name>/``, with a checkpoint saved at its end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from wesar_foundry.commands.cli import main
from wesar_foundry.commands.tiny import TINY_DIR, tiny_yamls

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ('hf_gpt_neox', 'hf_llama', 'hf_mistral', 'hf_phi3', 'hf_qwen2', 'hf_qwen3', 'mpt', 'wesar')


def test_every_family_ships_a_tiny_yaml():
    assert [p.stem for p in tiny_yamls()] == list(FAMILIES)


def test_configs_writes_the_packaged_tiny_yamls_byte_for_byte_and_says_so(tmp_path, capsys):
    out = tmp_path / 'wesar-yamls'
    assert main(['configs', '--out', str(out)]) == 0
    assert sorted(p.name for p in (out / 'tiny').iterdir()) == [p.name for p in tiny_yamls()]
    for src in tiny_yamls():
        assert (out / 'tiny' / src.name).read_bytes() == src.read_bytes(), src.name
    printed = capsys.readouterr().out
    assert f'wrote {len(list(out.rglob("*.yaml")))} files to {out}/: tiny/<family>.yaml' in printed
    assert f'llmfoundry train {out}/tiny/wesar.yaml' in printed


def test_yamls_tiny_in_a_checkout_links_to_the_package_folder():
    link = ROOT / 'yamls' / 'tiny'
    assert link.is_symlink() and os.readlink(link) == '../wesar_foundry/commands/tiny_yamls'
    assert link.resolve() == TINY_DIR.resolve()


def _exporter(cfg) -> tuple[str, dict]:
    (name, options), = [(k, v) for k, v in cfg.callbacks.items() if k.endswith('hf_checkpointer')]
    return name, options


@pytest.mark.parametrize('path', tiny_yamls(), ids=lambda p: p.stem)
def test_a_tiny_run_writes_everything_under_runs_run_name_and_saves_at_its_end(path):
    cfg = OmegaConf.load(path)
    assert cfg.save_folder == 'runs/{run_name}/checkpoints'
    assert cfg.loggers.jsonl.path == 'runs/{run_name}/metrics.jsonl'
    name, exporter = _exporter(cfg)
    assert name == ('wesar_mpt_hf_checkpointer' if path.stem == 'mpt' else 'wesar_hf_checkpointer')
    assert exporter.save_folder == 'runs/{run_name}'  # → runs/<run_name>/huggingface/ba<N>
    # One checkpoint and one export, at the end: both intervals are the run's length.
    assert cfg.save_interval == exporter.save_interval == cfg.max_duration
    assert cfg.save_num_checkpoints_to_keep == 1 and cfg.save_overwrite is True


@pytest.mark.parametrize('path', tiny_yamls(), ids=lambda p: p.stem)
def test_a_tiny_yamls_header_gives_the_commands_for_its_own_run(path):
    cfg = OmegaConf.load(path)
    run = cfg.variables.run_name
    header = path.read_text().split('\nvariables:', 1)[0]
    for command in ('wesar-foundry prepare --out wesar-data', f'llmfoundry train yamls/tiny/{path.name}',
                    f'wesar-foundry export runs/{run}/checkpoints exported/',
                    f'wesar-foundry plot runs/{run}/metrics.jsonl'):
        assert f'#   {command}' in header, command
