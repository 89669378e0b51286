"""The tiny YAML's own header, run as written in a fresh folder (fewer steps, a smaller model):
``configs`` → ``llmfoundry``'s ``train()`` → ``export runs/<run_name>/checkpoints`` → ``plot``.
Everything it writes is under ``runs/<run_name>/`` or another path the repository's .gitignore
lists, and the export loads with plain transformers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from llmfoundry.command_utils import train
from omegaconf import OmegaConf

from tests.helpers import TINY_MODEL, batch
from wesar_foundry.commands.cli import main as cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUN = 'tiny-wesar'  # the YAML's run name, kept
STEPS = 3
# The shipped YAML shrunk by overrides only: model size, batch, and every length or interval set to
# the run's length together, as a user shortening the run would (save/export/logger keys as shipped).
SHRINK = [*(f'model.{k}={v}' for k, v in TINY_MODEL.items() if k != 'max_seq_len'),
          f'variables.max_seq_len={TINY_MODEL["max_seq_len"]}', f'max_duration={STEPS}ba', f'save_interval={STEPS}ba',
          f'callbacks.wesar_hf_checkpointer.save_interval={STEPS}ba', f'eval_interval={STEPS}ba',
          'eval_subset_num_batches=1', 'global_train_batch_size=8', 'device_train_batch_size=8',
          'device_train_microbatch_size=8', 'device_eval_batch_size=8', 'scheduler.t_warmup=1ba',
          'console_log_interval=1ba', 'callbacks.update_ratio_monitor.interval=1']


def written(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file() or p.is_symlink())


@pytest.fixture(scope='module')
def quickstart(tiny_data, tmp_path_factory):
    """In a fresh folder holding only ``wesar-data/``: the commands of yamls/tiny/wesar.yaml's header,
    training twice (a rerun replaces the first run's outputs)."""
    work = tmp_path_factory.mktemp('quickstart')
    shutil.copytree(tiny_data, work / 'wesar-data')
    here = os.getcwd()
    os.chdir(work)
    try:
        assert cli(['configs', '--out', 'wesar-yamls']) == 0
        cfg = lambda: OmegaConf.merge(OmegaConf.load('wesar-yamls/tiny/wesar.yaml'), OmegaConf.from_dotlist(SHRINK))  # noqa: E731
        first = train(cfg())
        first.close()
        trainer = train(cfg())  # `llmfoundry train` again: the checkpoint is replaced, not refused
        with torch.no_grad():
            logits = trainer.state.model.model.eval()(input_ids=batch(seq=16, seed=2)['input_ids']).logits
        trainer.close()
        assert cli(['export', f'runs/{RUN}/checkpoints', 'exported']) == 0
        assert cli(['plot', f'runs/{RUN}/metrics.jsonl']) == 0
    finally:
        os.chdir(here)
    return {'work': work, 'logits': logits}


def test_the_run_writes_its_metrics_checkpoint_and_export_under_runs_run_name(quickstart):
    run = quickstart['work'] / 'runs' / RUN
    files = written(run)
    assert f'checkpoints/ep0-ba{STEPS}-rank0.pt' in files and 'metrics.jsonl' in files
    assert (run / 'checkpoints' / 'latest-rank0.pt').resolve() == run / 'checkpoints' / f'ep0-ba{STEPS}-rank0.pt'
    assert [f for f in files if f.startswith('checkpoints/')] == [f'checkpoints/ep0-ba{STEPS}-rank0.pt',
                                                                   'checkpoints/latest-rank0.pt']
    assert f'huggingface/ba{STEPS}/config.json' in files


def test_export_of_the_save_folder_loads_as_a_stock_llama_with_the_trained_logits(quickstart):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(quickstart['work'] / 'exported', torch_dtype=torch.float32).eval()
    assert type(model).__name__ == 'LlamaForCausalLM'
    with torch.no_grad():
        logits = model(input_ids=batch(seq=16, seed=2)['input_ids']).logits
    torch.testing.assert_close(logits, quickstart['logits'], rtol=1e-4, atol=1e-4)


def test_everything_the_quickstart_wrote_is_ignored_by_the_repositorys_gitignore(quickstart):
    work = quickstart['work']
    outputs = written(work)
    assert {'fig.png', 'fig.svg', 'wesar-yamls/tiny/wesar.yaml', 'exported/config.json',
            f'runs/{RUN}/metrics.jsonl'} <= set(outputs)
    shutil.copy(ROOT / '.gitignore', work / '.gitignore')
    subprocess.run(['git', 'init', '-q'], cwd=work, check=True)
    status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=work, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    assert status == ['?? .gitignore']
