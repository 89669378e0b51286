"""The object-store path over two ranks, against a local S3-compatible server (``tests/s3.py``):
``prepare`` puts the dataset on the store; the shrunk paper YAML streams it through ``remote:``,
saves sharded checkpoints and ``metrics.jsonl`` to an ``s3://`` save folder, is SIGKILLed at a
random step between its step-5 and step-10 checkpoints and, started again by the same command in
a fresh working folder, autoresumes from the store; then both exports (the run's
``wesar_hf_checkpointer`` and ``wesar-foundry export`` of a remote sharded checkpoint) load as stock
Llamas with the trained logits, and ``plot`` reads the store."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.distributed.configs import overrides
from tests.distributed.launch import result, run_train_jobs
from tests.s3 import s3  # noqa: F401 (fixture)
from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.commands.cli import main as cli
from wesar_foundry.files.remote import Store

# A random step after the step-5 checkpoint and before the step-10 one (printed in failures): the
# resume must not depend on where the kill lands.
KILL_AT = random.Random().randint(6, 10)
RUN = 'store-2rank'
STORE_DRIVER = Path(__file__).with_name('store_driver.py')


def _job(work: Path, phase: str, cmd: list[str]) -> dict:
    cwd = work / phase  # a fresh working folder per launch: nothing local survives the "machine"
    return {'reparam': 'wesar', 'cwd': str(cwd), 'out': str(cwd / 'out'), 'overrides': cmd}


def _rows(text: bytes) -> list[dict]:
    return [json.loads(line) for line in text.decode().splitlines()]


@pytest.fixture(scope='module')
def store_run(s3, tiny_data, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp('object-store')
    bucket = s3.bucket()
    data, save = f's3://{bucket}/data', f's3://{bucket}/{RUN}'
    # 1. The dataset onto the store (the suite's corpus and tokenizer).
    assert cli(['prepare', '--out', data, '--tokenizer', str(tiny_data / 'tokenizer'), '--seq-len', '32',
                '--max-chars', '200000']) == 0
    # 2. One command for both launches: local paths are relative to the working folder (the stream
    # cache), everything that must survive is on the store.
    marker = work / 'preempted-once'
    cmd = overrides(Path('stream-cache'), save, RUN, 2, 'callbacks.test_gloo_grad_average={}',
                    f'variables.tokenizer_name={tiny_data}/tokenizer',
                    f'variables.data_remote={data}', f'variables.eval_data_remote={data}',
                    f'callbacks.test_preempt_after_upload.step={KILL_AT}',
                    f'callbacks.test_preempt_after_upload.marker={marker}',
                    f'callbacks.test_preempt_after_upload.link={save}/latest-sharded-rank0.symlink',
                    f'callbacks.test_preempt_after_upload.checkpoint={RUN}/ep0-ba5')
    first, second = _job(work, 'first', cmd), _job(work, 'second', cmd)
    run_train_jobs([first], work / 'launch-1', driver=STORE_DRIVER, expect_failure=True)
    killed = {'marker': marker.exists(), 'keys': s3.keys(bucket, f'{RUN}/'),
              'rows': _rows(s3.read(bucket, f'{RUN}/metrics.jsonl')),
              'latest': s3.read(bucket, f'{RUN}/latest-sharded-rank0.symlink').decode()}
    assert not Path(second['cwd']).exists()
    run_train_jobs([second], work / 'launch-2', driver=STORE_DRIVER)
    return {'bucket': bucket, 'save': save, 'killed': killed, 'resumed': result(second), 'work': work,
            'rows': _rows(s3.read(bucket, f'{RUN}/metrics.jsonl')), 'keys': s3.keys(bucket, f'{RUN}/')}


def test_the_first_launch_is_killed_after_its_step_5_checkpoint_reached_the_store(store_run):
    killed = store_run['killed']
    assert killed['marker'] and killed['latest'] == f'{RUN}/ep0-ba5', f'killed at step {KILL_AT}'
    checkpoints = {k.split('/')[1] for k in killed['keys'] if re.fullmatch(rf'{RUN}/ep\d+-ba\d+/.*', k)}
    assert checkpoints == {'ep0-ba5'}
    assert {f'{RUN}/ep0-ba5/{n}' for n in ('.metadata', '__0_0.distcp', '__1_0.distcp')} <= set(killed['keys'])
    # metrics.jsonl went up with the checkpoint: at least every step up to it.
    assert {r['step'] for r in killed['rows'] if 'loss/train/total' in r} >= set(range(5))


def test_the_second_launch_resumes_from_the_store_and_metrics_jsonl_holds_every_step_once(store_run):
    resumed = store_run['resumed']
    assert sorted(resumed['metrics']['loss/train/total']) == [5, 6, 7, 8, 9], f'killed at step {KILL_AT}'  # not from 0
    rows = store_run['rows']
    counts = Counter((r['step'], k) for r in rows if 'step' in r for k in r if k != 'step')
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]
    loss = {r['step']: r['loss/train/total'] for r in rows if 'loss/train/total' in r}
    assert sorted(loss) == list(range(10))
    # Steps 5..9 are the resumed run's (the in-memory logger), steps 0..4 the killed run's.
    assert [loss[s] for s in range(5, 10)] == pytest.approx([resumed['metrics']['loss/train/total'][s]
                                                             for s in range(5, 10)], rel=1e-6)
    before = {r['step']: r['loss/train/total'] for r in store_run['killed']['rows'] if 'loss/train/total' in r}
    assert [loss[s] for s in range(5)] == [before[s] for s in range(5)]
    assert f'{RUN}/ep0-ba10/.metadata' in store_run['keys']


def test_both_exports_from_the_store_load_as_stock_llamas_with_the_trained_logits(store_run, s3, tmp_path, monkeypatch):
    save, bucket = store_run['save'], store_run['bucket']
    downloaded: list[str] = []
    download = Store.download
    monkeypatch.setattr(Store, 'download', lambda self, key, dest: (downloaded.append(key), download(self, key, dest))[1])
    assert cli(['export', save, str(tmp_path / 'from-save-folder')]) == 0
    # Only the latest link and that checkpoint's metadata and shards: not ep0-ba5, not the exports.
    assert set(downloaded) == {f'{RUN}/latest-sharded-rank0.symlink', f'{RUN}/ep0-ba10/.metadata',
                               f'{RUN}/ep0-ba10/__0_0.distcp', f'{RUN}/ep0-ba10/__1_0.distcp'}
    assert cli(['export', f'{save}/ep0-ba10', str(tmp_path / 'from-checkpoint')]) == 0
    # The callback's export of the final step, uploaded by rank 0.
    callback = s3.download_folder(bucket, f'{RUN}/huggingface/ba10', tmp_path / 'callback')
    assert (callback / 'config.json').is_file()
    dirs = {'save-folder': tmp_path / 'from-save-folder', 'checkpoint': tmp_path / 'from-checkpoint', 'callback': callback}
    resumed = store_run['resumed']
    loaded = load_with_stock_transformers(dirs, resumed['input_ids'], tmp_path / 'loader', generate=False)
    assert loaded['_our_modules'] == []
    for name in dirs:
        assert (loaded[name]['class'], loaded[name]['model_type']) == ('LlamaForCausalLM', 'llama'), name
        torch.testing.assert_close(loaded[name]['logits'], resumed['logits'], rtol=1e-5, atol=1e-5, msg=name)


def test_plot_reads_metrics_jsonl_from_the_store(store_run, tmp_path):
    assert cli(['plot', f'{store_run["save"]}/metrics.jsonl', '--out', str(tmp_path / 'fig.png')]) == 0
    assert (tmp_path / 'fig.png').stat().st_size > 0 and (tmp_path / 'fig.svg').is_file()
