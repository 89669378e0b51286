"""``wesar-foundry export`` of a real two-rank FSDP2 sharded checkpoint: consolidated on CPU in one
process, it computes what the trained model computed."""

from __future__ import annotations

import re

import pytest
import torch

from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.commands.cli import main as cli

pytestmark = pytest.mark.distributed


def test_export_of_the_latest_two_rank_sharded_checkpoint_gives_the_trained_models_logits(fsdp_runs, tmp_path):
    run = fsdp_runs['wesar']
    checkpoints = {int(re.fullmatch(r'ep\d+-ba(\d+)', p.name)[1]): p
                   for p in run.save_folder.glob('ep*-ba*') if p.is_dir()}
    latest = checkpoints[max(checkpoints)]
    # Two ranks wrote it: one shard file each, and the metadata that marks the save complete.
    assert {p.name for p in latest.iterdir()} >= {'.metadata', '__0_0.distcp', '__1_0.distcp'}
    assert (run.save_folder / 'latest-sharded-rank0').resolve() == latest.resolve()
    # Given the save folder, export follows its latest-sharded-rank0 link.
    assert cli(['export', str(run.save_folder), str(tmp_path / 'out')]) == 0
    loaded = load_with_stock_transformers({'out': tmp_path / 'out'}, run.input_ids, tmp_path / 'loader')
    got = loaded['out']
    assert (got['class'], got['model_type']) == ('LlamaForCausalLM', 'llama')
    torch.testing.assert_close(got['logits'], run.logits, rtol=1e-5, atol=1e-5)
