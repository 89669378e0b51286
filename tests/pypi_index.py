"""A metadata-only package index in front of PyPI, for resolver dry runs of the MosaicML job's
``pip install`` as the image's Python 3.12 would do it (used by tests/commands/test_paper.py)."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

IMAGE_PLATFORMS = ([f'manylinux_2_{minor}_x86_64' for minor in range(35, 4, -1)]
                   + ['manylinux2014_x86_64', 'manylinux2010_x86_64', 'manylinux1_x86_64'])
IMAGE_TAGS = {*cpython_tags((3, 12), platforms=IMAGE_PLATFORMS), *compatible_tags((3, 12), 'cp312', IMAGE_PLATFORMS)}
# pip evaluates environment markers for the interpreter it runs on, whatever --python-version
# says; _PIP_IN_IMAGE runs it with these instead. The image's patch release is not pinned: .0.
IMAGE_MARKERS = {'python_version': '3.12', 'python_full_version': '3.12.0', 'implementation_version': '3.12.0',
                 'implementation_name': 'cpython', 'platform_python_implementation': 'CPython',
                 'os_name': 'posix', 'sys_platform': 'linux', 'platform_system': 'Linux', 'platform_machine': 'x86_64'}
_PIP_IN_IMAGE = '''
import json, sys
sys.path.insert(0, sys.argv[1])  # pip's own wheel, run from the zip
from pip._vendor.packaging import markers
env = {**markers.default_environment(), **json.loads(sys.argv[2])}
markers.default_environment = lambda: dict(env)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[3:]))
'''
# pip >= 25.3 resolves a --dry-run from wheels' metadata alone (pypa/pip#13482); older ones
# download every wheel of the solution, torch's 865 MB among them.
PIP_FOR_DRY_RUN = 'pip>=25.3'


_TLS = ssl.create_default_context()  # one for all requests: loading the CA store costs ~70 ms of CPU


def _http(url: str, headers: dict[str, str] | None = None, attempts: int = 4) -> tuple[Any, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=60, context=_TLS) as response:
                return response.headers, response.read()
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == attempts - 1:
                raise
        except (OSError, http.client.HTTPException):  # resets and timeouts under 16 connections
            if attempt == attempts - 1:
                raise
        time.sleep(0.5 * 2 ** attempt)
    raise AssertionError('unreachable')


class _RangeFile:
    """A remote file read by HTTP range requests: enough of a file for zipfile to read one member
    (the end, the central directory, then the member), a few tens of kB of a wheel."""

    def __init__(self, url: str):
        self.url, self.pos = url, 0
        headers, tail = _http(url, {'Range': 'bytes=-65536'})
        # A server that ignores Range sends the whole file: then it is all in the one chunk.
        self.size = int(headers['Content-Range'].rsplit('/', 1)[1]) if headers['Content-Range'] else len(tail)
        self.chunks = [(self.size - len(tail), tail)]

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = (0, self.pos, self.size)[whence] + offset
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        chunk = next(((at, data) for at, data in self.chunks if at <= self.pos and end <= at + len(data)), None)
        if chunk is None:
            # Read ahead: a member's local header and its data then come in one request.
            stop = min(self.size, max(end, self.pos + 65536))
            chunk = (self.pos, _http(self.url, {'Range': f'bytes={self.pos}-{stop - 1}'})[1])
            self.chunks.append(chunk)
        at, data = chunk
        out = data[self.pos - at:end - at]
        self.pos += len(out)
        return out


def _wheel_version(filename: str) -> Version | None:
    try:
        return Version(filename.split('-')[1])  # cheaper than parse_wheel_filename, on thousands of files
    except InvalidVersion:
        return None  # some old uploads predate PEP 440


def _wheel_metadata(url: str) -> bytes:
    try:
        return _http(url + '.metadata')[1]
    except urllib.error.HTTPError:
        with zipfile.ZipFile(_RangeFile(url)) as wheel:
            return wheel.read(next(n for n in wheel.namelist() if n.count('/') == 1 and n.endswith('.dist-info/METADATA')))


class _MetadataIndex(ThreadingHTTPServer):
    """A PEP 691 index on localhost in front of ``upstream`` that serves wheels' metadata only.

    pip resolves from metadata alone only where the index says a wheel's METADATA is served on its
    own (PEP 658). PyPI does; the PyPI proxy on our build machine neither says so nor always
    serves it, and then pip downloads whole wheels. This index says so for every wheel and serves
    upstream's ``<wheel>.metadata`` or, missing that, the METADATA member read out of the wheel by
    range requests. Whole wheels get a 404: a dry run must not ask for one.

    pip asks for one page or file at a time; this index fetches upstream with 16 threads, starting
    with every page of the lock's names and then, per page, the metadata of the lock's version.
    A locked name's page lists that version's files only: the constraint rules out the others
    anyway, and pip spends less time reading pages such as torch's thousand files.
    """

    def __init__(self, upstream: str, pins: dict[str, str]):
        super().__init__(('127.0.0.1', 0), _MetadataIndexHandler)
        self.upstream, self.pins = upstream, pins
        self.url = f'http://127.0.0.1:{self.server_address[1]}'
        self.pool = ThreadPoolExecutor(16)
        self.futures: dict[str, Future] = {}
        self.lock = threading.Lock()
        for name in pins:
            self.prefetch(f'simple:{name}', self.page, name)

    def prefetch(self, key: str, fn, arg: str) -> None:
        with self.lock:
            if key not in self.futures:
                self.futures[key] = self.pool.submit(fn, arg)

    def get(self, key: str, fn, arg: str) -> bytes:
        """What pip asks for: fetched or being fetched, else fetched now, ahead of the queue."""
        with self.lock:
            future = self.futures.get(key)
            failed = future is not None and future.done() and future.exception() is not None  # pip retries: so do we
            here = future is None or failed or future.cancel()  # cancel() succeeds while still queued
            if here:
                future = self.futures[key] = Future()
        if here:
            try:
                future.set_result(fn(arg))
            except Exception as e:  # noqa: BLE001 - handed to every request for it
                future.set_exception(e)
        return future.result()

    def page(self, name: str) -> bytes:
        url = f'{self.upstream}{name}/'
        project = json.loads(_http(url, {'Accept': 'application/vnd.pypi.simple.v1+json'})[1])
        pin = Version(self.pins[name]) if name in self.pins else None
        files = []
        for file in project['files']:
            filename = file['filename']
            if not filename.endswith('.whl'):
                continue  # sdists: pip is told --only-binary=:all:
            if pin is not None and _wheel_version(filename) != pin:
                continue
            wheel = urllib.parse.urljoin(url, file['url'])
            files.append({**file, 'url': f'{self.url}/files/{wheel.replace("://", "/", 1)}',
                          'core-metadata': True, 'dist-info-metadata': True})
            if pin is not None and parse_wheel_filename(filename)[3] & IMAGE_TAGS:
                self.prefetch(wheel, _wheel_metadata, wheel)  # what pip asks for next
        return json.dumps({**project, 'files': files}).encode()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.pool.shutdown(cancel_futures=True)


class _MetadataIndexHandler(BaseHTTPRequestHandler):
    server: _MetadataIndex

    def do_GET(self) -> None:
        kind, _, rest = self.path.lstrip('/').partition('/')
        try:
            if kind == 'simple':
                name = canonicalize_name(rest.strip('/'))
                body = self.server.get(f'simple:{name}', self.server.page, name)
                content_type = 'application/vnd.pypi.simple.v1+json'
            elif kind == 'files' and rest.endswith('.metadata'):
                wheel = rest.removesuffix('.metadata').replace('/', '://', 1)
                body, content_type = self.server.get(wheel, _wheel_metadata, wheel), 'text/plain'
            else:
                self.send_error(404, 'metadata only')
                return
        except urllib.error.HTTPError as e:
            self.send_error(e.code)
            return
        except Exception as e:  # noqa: BLE001 - reported to pip, which shows it
            self.send_error(502, repr(e)[:200])
            return
        self.send_response(200)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _lock_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.split('#')[0].strip().partition('==')
        if sep:
            pins[canonicalize_name(name.split('[')[0])] = version.strip()
    return pins
