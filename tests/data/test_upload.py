"""``prepare --out s3://...`` against a local S3-compatible server (``tests/s3.py``): shards, then
indexes, then the manifest, so a half upload never looks complete; ``--force`` never deletes what
prepare did not upload."""

from __future__ import annotations

import json

import pytest
from streaming import StreamingDataset

from tests.s3 import s3  # noqa: F401 (fixture)
from wesar_foundry.data import MANIFEST, PrepareConfig, check_loader_splits, check_split, prepare
from wesar_foundry.files.remote import Store


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


@pytest.mark.slow
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
