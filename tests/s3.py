"""A local S3-compatible server for the object-store tests: moto in server mode on 127.0.0.1 (any
credentials), reached the way users reach MinIO or R2, through ``S3_ENDPOINT_URL`` (Composer's
``S3ObjectStore`` and streaming read it; a plain boto3 client is given ``endpoint_url``).

The ``s3`` fixture sets the endpoint and credentials in this process's environment for the module,
so processes it starts (the ranks of a ``composer -n 2`` launch) inherit them. Import it into a test
module: ``from tests.s3 import s3  # noqa: F401``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ENV = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1',
       # Loopback only: no proxy, no credentials or config from the machine.
       'NO_PROXY': '127.0.0.1,localhost', 'no_proxy': '127.0.0.1,localhost',
       'AWS_SHARED_CREDENTIALS_FILE': os.devnull, 'AWS_CONFIG_FILE': os.devnull, 'AWS_EC2_METADATA_DISABLED': 'true'}
UNSET = ('AWS_PROFILE', 'AWS_SESSION_TOKEN', 'HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy')


@dataclass
class S3:
    """The running server and a client for arranging and inspecting buckets."""

    endpoint: str
    client: object

    def bucket(self) -> str:
        """A new empty bucket's name."""
        name = f'wesar-{uuid.uuid4().hex[:12]}'
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = '') -> list[str]:
        pages = self.client.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o['Key'] for page in pages for o in page.get('Contents', []))

    def read(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)['Body'].read()

    def download_folder(self, bucket: str, prefix: str, dest: Path) -> Path:
        for key in self.keys(bucket, prefix.rstrip('/') + '/'):
            out = dest / key[len(prefix):].lstrip('/')
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(self.read(bucket, key))
        return dest


@pytest.fixture(scope='module')
def s3() -> Iterator[S3]:
    import boto3
    from moto.server import ThreadedMotoServer
    logging.getLogger('werkzeug').setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f'http://{host}:{port}'
        with pytest.MonkeyPatch.context() as mp:
            for k in UNSET:
                mp.delenv(k, raising=False)
            for k, v in {**ENV, 'S3_ENDPOINT_URL': endpoint}.items():
                mp.setenv(k, v)
            yield S3(endpoint, boto3.client('s3', endpoint_url=endpoint))
    finally:
        server.stop()
