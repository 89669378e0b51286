"""Object stores in one process, against a local S3-compatible server (``tests/s3.py``): every
command that reads the store (prepare, export, plot, ``wesar_data_check``) says what is wrong with
a bad bucket, prefix, object or missing credentials, and the jsonl logger writes to it. Uploads by
``prepare`` are specified in ``tests/data/test_upload.py``; the two-rank tier trains on the store
(``tests/distributed/test_object_store.py``)."""

from __future__ import annotations

import json

import pytest

from tests.s3 import s3  # noqa: F401 (fixture)
from wesar_foundry.commands.cli import main as cli
from wesar_foundry.data import check_loader_splits, check_split


def test_a_missing_bucket_is_named_by_every_command(s3, tmp_path, capsys):
    for argv in (['prepare', '--out', 's3://no-such-bucket/data'],
                 ['export', 's3://no-such-bucket/run', str(tmp_path / 'out')],
                 ['plot', 's3://no-such-bucket/run/metrics.jsonl', '--out', str(tmp_path / 'fig.png')]):
        assert cli(argv) == 2
        assert 'the bucket s3://no-such-bucket does not exist at S3_ENDPOINT_URL=http://127.0.0.1' in capsys.readouterr().err
    with pytest.raises(ValueError, match=r'eval_loader: eval_loader.dataset.remote=s3://no-such-bucket/data: reading '
                                         r'.*the bucket s3://no-such-bucket does not exist'):
        check_loader_splits({'eval_loader': {'name': 'text', 'dataset': {'local': 'x', 'remote': 's3://no-such-bucket/data',
                                                                          'split': 'val'}}})
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'fig.png').exists()


def test_a_missing_prefix_is_named(s3, tmp_path, capsys):
    bucket = s3.bucket()
    assert cli(['export', f's3://{bucket}/no/run', str(tmp_path / 'out')]) == 2
    assert f's3://{bucket}/no/run does not exist (no object at or under it)' in capsys.readouterr().err
    assert cli(['plot', f's3://{bucket}/no/run/metrics.jsonl', '--out', str(tmp_path / 'fig.png')]) == 2
    assert f's3://{bucket}/no/run/metrics.jsonl does not exist' in capsys.readouterr().err
    with pytest.raises(ValueError, match=rf'dataset.remote=s3://{bucket}/no/data has no train/index.json .*nothing is '
                                         rf'there; `wesar-foundry prepare --out s3://{bucket}/no/data` prepares'):
        check_split(tmp_path / 'cache', 'train', remote=f's3://{bucket}/no/data')


def test_an_object_that_is_no_checkpoint_or_metrics_file_is_refused_by_name(s3, tmp_path, capsys):
    bucket = s3.bucket()
    s3.client.put_object(Bucket=bucket, Key='run/notes.txt', Body=b'not a checkpoint\n')
    s3.client.put_object(Bucket=bucket, Key='run/ep0-ba5/__0_0.distcp', Body=b'half a save')
    assert cli(['export', f's3://{bucket}/run', str(tmp_path / 'out')]) == 2
    assert (f's3://{bucket}/run is neither a sharded Composer checkpoint (no .metadata object in it) nor a save folder '
            'with a latest-sharded-rank0.symlink object') in capsys.readouterr().err
    assert cli(['export', f's3://{bucket}/run/ep0-ba5', str(tmp_path / 'out')]) == 2
    assert f's3://{bucket}/run/ep0-ba5 is an incomplete sharded checkpoint' in capsys.readouterr().err
    assert cli(['export', f's3://{bucket}/run/notes.txt', str(tmp_path / 'out')]) == 2
    assert f's3://{bucket}/run/notes.txt cannot be read as a Composer checkpoint' in capsys.readouterr().err
    assert cli(['plot', f's3://{bucket}/run/notes.txt', '--out', str(tmp_path / 'fig.png')]) == 2
    assert f's3://{bucket}/run/notes.txt: no metrics found' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_missing_credentials_are_named(s3, tmp_path, monkeypatch, capsys):
    bucket = s3.bucket()
    monkeypatch.delenv('AWS_ACCESS_KEY_ID')
    monkeypatch.delenv('AWS_SECRET_ACCESS_KEY')
    assert cli(['export', f's3://{bucket}/run', str(tmp_path / 'out')]) == 2
    assert 'no valid credentials for the object store (NoCredentialsError' in capsys.readouterr().err
    with pytest.raises(ValueError, match='no valid credentials.*set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY'):
        check_split(tmp_path / 'cache', 'train', remote=f's3://{bucket}/data')


def test_the_jsonl_logger_writes_to_the_store_and_a_bad_bucket_stops_the_run_before_training(s3, train_cfg, tmp_path):
    from llmfoundry.command_utils import train
    bucket = s3.bucket()
    trainer = train(train_cfg(f'loggers.jsonl.path=s3://{bucket}/run/metrics.jsonl'))
    trainer.close()
    rows = [json.loads(line) for line in s3.read(bucket, 'run/metrics.jsonl').decode().splitlines()]
    assert sorted(r['step'] for r in rows if 'loss/train/total' in r) == list(range(10))
    local = tmp_path / trainer.state.run_name / 'metrics.jsonl'  # the local copy it uploads
    assert local.read_bytes() == s3.read(bucket, 'run/metrics.jsonl')
    with pytest.raises(ValueError, match=r'reading s3://no-such-bucket/run/metrics.jsonl: the bucket s3://no-such-bucket '
                                         'does not exist'):
        train(train_cfg('loggers.jsonl.path=s3://no-such-bucket/run/metrics.jsonl', 'max_duration=1000ba'))
