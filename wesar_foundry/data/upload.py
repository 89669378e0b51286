"""``wesar-foundry prepare --out s3://<bucket>/<prefix>``: prepare in a local staging folder, then
upload, in an order that never shows a half dataset as complete.

Order: every other file first (tokenizer, MDS shards), then each split's ``index.json`` (without
it streaming cannot read the split), then the manifest ``prepare.json`` (the mark of a finished
upload). An upload that fails midway leaves shards without indexes or manifest: ``check_split``
(``wesar_data_check``) reports it as unfinished and ``prepare`` refuses to build over it without
``--force``. ``--force`` over an existing remote dataset deletes the manifest first, then the
indexes, then the rest, so a replacement interrupted at any point is never taken for the old
dataset either.

The staging folder is a temporary folder (``TMPDIR``): it needs the dataset's size on local disk
until the upload ends.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from wesar_foundry.data.mds import MANIFEST, foreign_entries
from wesar_foundry.files.remote import Store, join, split_uri

if TYPE_CHECKING:
    from wesar_foundry.data.pipeline import PrepareConfig

INDEX = 'index.json'


def _progress(msg: str) -> None:
    from wesar_foundry.data.pipeline import _progress as progress
    progress(msg)


def upload_order(names: list[str]) -> list[str]:
    """Relative file names in upload order: data, then indexes, then the manifest."""
    rank = lambda n: 2 if n == MANIFEST else 1 if n.rsplit('/', 1)[-1] == INDEX else 0  # noqa: E731
    return sorted(names, key=lambda n: (rank(n), n))


def _clear(store: Store, keys: list[str], prefix: str) -> None:
    """Delete ``keys`` (the old dataset): its manifest first, then its indexes, then the rest."""
    for key in reversed(upload_order([k[len(prefix):].lstrip('/') if prefix else k for k in keys])):
        store.delete(join(prefix, key))


def prepare_remote(cfg: PrepareConfig, force: bool = False) -> str:
    """``prepare`` with ``cfg.out`` an object store URI (see the module doc). Reuses a remote
    dataset prepared with the same config, as a local ``prepare`` does. Returns ``cfg.out``."""
    from wesar_foundry.data.pipeline import prepare, reuse_prepared
    cfg.validate()
    uri = cfg.out.rstrip('/')
    store, (_, prefix) = Store(uri), split_uri(uri)
    # Before any compute: what is already there (this also fails early on a bad bucket or credentials).
    existing = store.keys(prefix)
    manifest = join(prefix, MANIFEST)
    # --force deletes what is under the prefix: only ever a dataset (or an unfinished upload of one).
    foreign = foreign_entries(k[len(prefix):].lstrip('/') if prefix else k for k in existing)
    if foreign:
        listed = ', '.join(foreign[:5]) + (' ...' if len(foreign) > 5 else '')
        raise FileExistsError(f'{uri} holds objects that prepare does not write ({listed}); prepare replaces only a '
                              'dataset it uploaded, even with --force: choose another --out prefix')
    if existing and not force:
        if manifest in existing:
            reuse_prepared(store.read_text(manifest), cfg, uri)
            return uri
        raise FileExistsError(f'{uri} holds {len(existing)} object(s) but no {MANIFEST}: an unfinished prepare upload '
                              'or not a prepared dataset; pass --force to replace them, or choose another --out')
    with tempfile.TemporaryDirectory(prefix='wesar-prepare-') as tmp:
        local = prepare(replace(cfg, out=str(Path(tmp) / 'data')), force=True)
        # The manifest records where the data is: the object store, not the staging folder.
        record = json.loads((local / MANIFEST).read_text())
        record['config']['out'] = uri
        (local / MANIFEST).write_text(json.dumps(record, indent=1))
        if existing:
            _progress(f'--force: deleting the {len(existing)} object(s) under {uri} (manifest and indexes first)')
            _clear(store, existing, prefix)
        names = upload_order([p.relative_to(local).as_posix() for p in local.rglob('*') if p.is_file()])
        _progress(f'uploading {len(names)} files to {uri} (indexes and {MANIFEST} last)')
        for name in names:
            store.upload(local / name, join(prefix, name))
    _progress(f'done: {uri}')
    return uri
