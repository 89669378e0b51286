"""The object-store path in one process, against a local S3-compatible server (``tests/s3.py``):
``prepare --out s3://...`` uploads in an order that never shows a half dataset as complete, and
every command that reads the store (prepare, export, plot, ``wesar_data_check``) says what is
wrong with a bad bucket, prefix, object or missing credentials. The two-rank tier trains on it
(``tests/distributed/test_object_store.py``)."""

from __future__ import annotations

import json

import pytest
from streaming import StreamingDataset

from tests.s3 import s3  # noqa: F401 (fixture)
from wesar_foundry.cli import main as cli
from wesar_foundry.data import MANIFEST, PrepareConfig, check_loader_splits, check_split, prepare
from wesar_foundry.remote import Store


def _cfg(tiny_data, uri: str, **kw) -> PrepareConfig:
    # The suite's tokenizer (no BPE training) and a few thousand characters: a second or two.
    return PrepareConfig(out=uri, tokenizer=str(tiny_data / 'tokenizer'), seq_len=32, max_chars=20_000, **kw)


def _loader_cfg(uri: str, cache) -> dict:
    return {'train_loader': {'name': 'text', 'dataset': {'local': str(cache), 'remote': uri, 'split': 'train'}}}


@pytest.fixture
def uploads(monkeypatch) -> list[str]:
    """Every key uploaded (in order) and deleted (as ``'-key'``) through ``Store``."""
    seen: list[str] = []
    upload, delete = Store.upload, Store.delete

    def record_upload(self, src, key):
        upload(self, src, key)
        seen.append(key)

    def record_delete(self, key):
        delete(self, key)
        seen.append(f'-{key}')

    monkeypatch.setattr(Store, 'upload', record_upload)
    monkeypatch.setattr(Store, 'delete', record_delete)
    return seen


def test_prepare_uploads_shards_then_indexes_then_the_manifest_and_streaming_reads_it(s3, tiny_data, tmp_path, uploads):
    bucket = s3.bucket()
    uri = f's3://{bucket}/data'
    assert prepare(_cfg(tiny_data, uri)) == uri
    manifest = json.loads(s3.read(bucket, f'data/{MANIFEST}'))
    assert manifest['config']['out'] == uri  # not the local staging folder
    assert uploads[-1] == f'data/{MANIFEST}'
    indexes = [i for i, k in enumerate(uploads) if k.endswith('/index.json')]
    assert [uploads[i] for i in indexes] == ['data/train/index.json', 'data/val/index.json']
    assert min(indexes) > max(i for i, k in enumerate(uploads) if k.endswith('.mds'))
    assert any(k.startswith('data/tokenizer/') for k in uploads)
    assert set(uploads) == set(s3.keys(bucket))
    # The check a training run makes, and streaming itself, read the uploaded split.
    check_loader_splits(_loader_cfg(uri, tmp_path / 'cache'))
    ds = StreamingDataset(remote=f'{uri}', local=str(tmp_path / 'cache'), split='train', shuffle=False)
    assert len(ds) == manifest['samples']['train'] and ds[0]['tokens'].shape == (32,)


def test_prepare_again_reuses_the_same_config_and_refuses_another_without_force(s3, tiny_data, uploads):
    uri = f's3://{s3.bucket()}/data'
    prepare(_cfg(tiny_data, uri))
    n = len(uploads)
    prepare(_cfg(tiny_data, uri))
    assert len(uploads) == n  # reused: nothing uploaded
    with pytest.raises(FileExistsError, match='holds data prepared with another config; pass --force'):
        prepare(_cfg(tiny_data, uri, val_percent=10))


def test_a_failed_upload_is_recognized_as_incomplete_and_force_replaces_it_marker_first(s3, tiny_data, tmp_path,
                                                                                       monkeypatch, uploads):
    bucket = s3.bucket()
    uri = f's3://{bucket}/data'
    upload, cut = Store.upload, [True]

    def fail_after_three(self, src, key):
        if cut[0] and len(uploads) == 3:
            raise ConnectionError('upload cut off (test)')
        upload(self, src, key)

    monkeypatch.setattr(Store, 'upload', fail_after_three)
    with pytest.raises(ConnectionError):
        prepare(_cfg(tiny_data, uri))
    cut[0] = False
    left = s3.keys(bucket)
    assert len(left) == 3 and not any(k.endswith(('index.json', MANIFEST)) for k in left)
    # A training run refuses it before any compute, and says how to finish it.
    with pytest.raises(ValueError, match=r'train_loader: train_loader.dataset.remote=s3://\S+/data has no train/index.json '
                                         r"\(split 'train'\): it holds objects but no prepare.json: an unfinished "
                                         r'`wesar-foundry prepare --out s3://\S+/data` upload.*again with --force'):
        check_loader_splits(_loader_cfg(uri, tmp_path / 'cache'))
    # prepare does not build over it without --force ...
    with pytest.raises(FileExistsError, match=r'holds 3 object\(s\) but no prepare.json: an unfinished prepare upload'):
        prepare(_cfg(tiny_data, uri))
    # ... and with it, replaces it; over a complete dataset the manifest is deleted first, then the indexes.
    prepare(_cfg(tiny_data, uri), force=True)
    uploads.clear()
    prepare(_cfg(tiny_data, uri, val_percent=10), force=True)
    deleted = [k[1:] for k in uploads if k.startswith('-')]
    assert deleted[0] == f'data/{MANIFEST}'
    assert sorted(deleted[1:3]) == ['data/train/index.json', 'data/val/index.json']
    assert uploads.index(f'-{deleted[-1]}') < uploads.index(next(k for k in uploads if not k.startswith('-')))
    assert json.loads(s3.read(bucket, f'data/{MANIFEST}'))['config']['val_percent'] == 10
    check_split(tmp_path / 'cache', 'val', remote=uri)


def test_force_never_deletes_objects_that_prepare_did_not_upload(s3, tiny_data, uploads):
    bucket = s3.bucket()
    s3.client.put_object(Bucket=bucket, Key='data/train/shard.00000.mds', Body=b'half an upload')
    s3.client.put_object(Bucket=bucket, Key='data/checkpoints/ep0-ba5/.metadata', Body=b'a run')
    with pytest.raises(FileExistsError, match=r'holds objects that prepare does not write \(checkpoints/ep0-ba5/.metadata\)'):
        prepare(_cfg(tiny_data, f's3://{bucket}/data'), force=True)
    assert uploads == [] and len(s3.keys(bucket)) == 2


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
