"""Object stores (``s3://``, ``gs://``, ``oci://``, ...) through Composer's own helpers, with errors
that say what is wrong (no such bucket, no credentials, unreachable endpoint) instead of a
botocore traceback.

A URI ``<scheme>://<bucket>/<key>`` names an object, or a "folder" (every key under ``<key>/``).
S3-compatible stores (MinIO, R2, a local moto server) are reached through ``S3_ENDPOINT_URL``,
which Composer's ``S3ObjectStore`` and streaming read. Importing this module costs the standard
library only; Composer loads on first use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Composer's remote form of the latest-checkpoint links: a text object holding the target's key.
SYMLINK_SUFFIX = '.symlink'
# The objects of a sharded checkpoint folder that export downloads: the metadata and every rank's
# shard file (the optimizer's tensors share those files; export reads past their bytes).
SHARDED_FILE = re.compile(r'(\.metadata|__\d+_\d+\.distcp)')


def is_uri(path: Any) -> bool:
    """Whether ``path`` names an object store (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and '://' in path


def split_uri(uri: str) -> tuple[str, str]:
    """``(<scheme>://<bucket>, key)`` of ``uri``, the key without leading or trailing slashes."""
    from composer.utils import parse_uri
    scheme, bucket, key = parse_uri(uri)
    if not bucket:
        raise ValueError(f'{uri} names no bucket; expected {scheme}://<bucket>/<path>')
    return f'{scheme}://{bucket}', key.strip('/')


def parent(key: str) -> str:
    """The folder of a key (``''`` at the bucket's top)."""
    return key.rsplit('/', 1)[0] if '/' in key else ''


def join(uri: str, *parts: str) -> str:
    """``uri/part/...`` (also for keys: ``join('', 'a')`` is ``'a'``)."""
    return '/'.join(x for x in [uri.rstrip('/'), *(p.strip('/') for p in parts)] if x)


@contextmanager
def clear_errors(uri: str, doing: str) -> Iterator[None]:
    """Re-raise an object store failure while ``doing`` something with ``uri`` as a ValueError
    naming the cause and its fix. FileNotFoundError (a missing object) passes through."""
    try:
        yield
    except Exception as e:  # botocore's exceptions need botocore: match by name
        name, code = type(e).__name__, _error_code(e)
        endpoint = os.environ.get('S3_ENDPOINT_URL')
        where = f' at S3_ENDPOINT_URL={endpoint}' if endpoint else ''
        if code == 'NoSuchBucket' or 'NoSuchBucket' in str(e):  # Composer may have made it a FileNotFoundError
            bucket = split_uri(uri)[0]
            raise ValueError(f'{doing} {uri}: the bucket {bucket} does not exist{where}; create it, or fix the '
                             'bucket name') from e
        if isinstance(e, FileNotFoundError):
            raise
        if name in ('NoCredentialsError', 'PartialCredentialsError', 'InvalidAccessKeyId', 'SignatureDoesNotMatch') \
                or code in ('InvalidAccessKeyId', 'SignatureDoesNotMatch'):
            raise ValueError(f'{doing} {uri}: no valid credentials for the object store ({name}: {e}); set '
                             'AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and S3_ENDPOINT_URL for an '
                             'S3-compatible store') from e
        if name in ('EndpointConnectionError', 'ConnectTimeoutError', 'ConnectionError'):
            raise ValueError(f'{doing} {uri}: cannot reach the object store{where} ({e}); check S3_ENDPOINT_URL '
                             'and the network') from e
        raise


def _error_code(e: Exception) -> str | None:
    response = getattr(e, 'response', None) or getattr(getattr(e, '__cause__', None), 'response', None)
    return (response or {}).get('Error', {}).get('Code') if isinstance(response, dict) else None


class Store:
    """One bucket of an object store; keys are paths inside the bucket (Composer's object names)."""

    def __init__(self, uri: str) -> None:
        from composer.utils import maybe_create_object_store_from_uri
        self.base, _ = split_uri(uri)
        with clear_errors(uri, 'opening'):
            self.store = maybe_create_object_store_from_uri(uri)
        if self.store is None:
            raise ValueError(f'{uri} is not an object store URI Composer knows (s3://, gs://, oci://, ...)')

    def uri(self, key: str) -> str:
        return f'{self.base}/{key}'

    def exists(self, key: str) -> bool:
        with clear_errors(self.uri(key), 'reading'):
            try:
                self.store.get_object_size(key)
                return True
            except FileNotFoundError:
                return False

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix/`` (a folder; ``''``: the whole bucket)."""
        prefix = f'{prefix.strip("/")}/' if prefix.strip('/') else ''
        with clear_errors(self.uri(prefix), 'listing'):
            return sorted(self.store.list_objects(prefix))

    def download(self, key: str, dest: str | os.PathLike) -> Path:
        """``key`` → the local file ``dest`` (replaced if it exists); FileNotFoundError if there is no such object."""
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        with clear_errors(self.uri(key), 'downloading'):
            self.store.download_object(key, str(dest), overwrite=True)
        return Path(dest)

    def read_text(self, key: str) -> str:
        import tempfile
        with tempfile.TemporaryDirectory(prefix='wesar-remote-') as tmp:
            return self.download(key, Path(tmp) / 'object').read_text(encoding='utf-8')

    def upload(self, src: str | os.PathLike, key: str) -> None:
        with clear_errors(self.uri(key), 'uploading to'):
            self.store.upload_object(key, str(src))

    def delete(self, key: str) -> None:
        """Remove one object (S3 and S3-compatible stores: Composer's stores have no delete)."""
        client, bucket = getattr(self.store, 'client', None), getattr(self.store, 'bucket', None)
        if client is None or not isinstance(bucket, str) or not hasattr(client, 'delete_object'):
            raise ValueError(f'deleting {self.uri(key)}: only s3:// (and S3-compatible) stores can be cleared here; '
                             'remove the old objects with your store\'s own tool first')
        with clear_errors(self.uri(key), 'deleting'):
            client.delete_object(Bucket=bucket, Key=key)


def download_file(uri: str, dest: str | os.PathLike) -> Path:
    """One object → ``dest``, with a FileNotFoundError naming ``uri`` if there is none."""
    store, (_, key) = Store(uri), split_uri(uri)
    try:
        return store.download(key, dest)
    except FileNotFoundError:
        store.keys(parent(key))  # a download's 404 does not say whether the bucket is missing: a listing does
        raise FileNotFoundError(f'{uri} does not exist (no such object in the bucket)') from None


def upload_file(src: str | os.PathLike, uri: str) -> None:
    Store(uri).upload(src, split_uri(uri)[1])


# ----------------------------------------------------------------------------------------------
# Sharded Composer checkpoints on an object store
# ----------------------------------------------------------------------------------------------

def _checkpoint_error(uri: str, listing: list[str], latest: str) -> ValueError:
    names = sorted({k.rsplit('/', 2)[-2] for k in listing if k.endswith('/.metadata')})
    here = f' (complete checkpoints here: {", ".join(names)})' if names else ''
    return ValueError(f'{uri} is neither a sharded Composer checkpoint (no .metadata object in it) nor a save folder '
                      f'with a {latest}{SYMLINK_SUFFIX} object; export reads <save_folder>/ep<E>-ba<B>, a save folder, '
                      f'or a monolithic checkpoint file{here}')


def resolve_remote_checkpoint(uri: str, latest: str) -> tuple[str, str]:
    """What a remote ``uri`` names: ``('sharded', folder URI)`` (a folder holding ``.metadata``, or
    the folder a save folder's ``<latest>.symlink`` object names) or ``('file', uri)`` (one object:
    a monolithic checkpoint). A folder whose save did not finish (shards, no ``.metadata``) is refused."""
    store, (_, key) = Store(uri), split_uri(uri)
    if store.exists(join(key, '.metadata')):
        return 'sharded', uri.rstrip('/')
    link = join(key, latest + SYMLINK_SUFFIX)
    if store.exists(link):
        target = store.read_text(link).strip().strip('/')
        if not store.exists(join(target, '.metadata')):
            raise ValueError(f'{store.uri(link)} points to {store.uri(target)}, which holds no .metadata (deleted, or '
                             'its save did not finish); pass one of the save folder\'s checkpoint folders instead')
        return 'sharded', store.uri(target)
    if key and store.exists(key):
        return 'file', uri
    listing = store.keys(key)
    if any(SHARDED_FILE.fullmatch(k.rsplit('/', 1)[-1]) and parent(k) == key for k in listing):
        raise ValueError(f'{uri} is an incomplete sharded checkpoint: it has .distcp shards but no .metadata, which '
                         'torch.distributed.checkpoint writes last, so the save was interrupted (or is still running)')
    if not listing:
        raise FileNotFoundError(f'{uri} does not exist (no object at or under it)')
    raise _checkpoint_error(uri, listing, latest)


def download_sharded_checkpoint(folder_uri: str, dest: str | os.PathLike) -> Path:
    """The ``.metadata`` and ``__<r>_<i>.distcp`` objects of a remote sharded checkpoint folder →
    ``dest`` (nothing else of the save folder: no other checkpoint, no export)."""
    store, (_, key) = Store(folder_uri), split_uri(folder_uri)
    names = [k for k in store.keys(key) if parent(k) == key and SHARDED_FILE.fullmatch(k.rsplit('/', 1)[-1])]
    if not any(k.endswith('/.metadata') for k in names):
        raise ValueError(f'{folder_uri} holds no .metadata: not a complete sharded checkpoint')
    dest = Path(dest)
    for k in names:
        store.download(k, dest / k.rsplit('/', 1)[-1])
    return dest
