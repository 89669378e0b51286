"""``wesar-foundry configs`` from a non-editable install (a wheel in a folder outside the checkout:
the ``installed`` fixture): a pip-installed user gets the repository's ``yamls/tiny``, ``yamls/pretrain``
and ``yamls/mcloud`` without the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r'''
import sys
import wesar_foundry
from wesar_foundry.commands.cli import main
print(wesar_foundry.__file__)
sys.exit(main(['configs', '--out', 'wesar-yamls']))
'''


def test_configs_writes_the_shipped_yamls_from_the_installed_package_alone(installed, tmp_path):
    _, site = installed
    proc = subprocess.run([sys.executable, '-c', _CHILD], cwd=tmp_path, env={**os.environ, 'PYTHONPATH': str(site)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0].startswith(str(site))  # not the checkout
    assert 'FSDP_VERSION=2 composer -n 8 -m llmfoundry.cli.cli train wesar-yamls/pretrain/1b/wesar-rapid.yaml' in proc.stdout
    out = tmp_path / 'wesar-yamls'
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob('*') if p.is_file())
    shipped = sorted(p.relative_to(ROOT / 'yamls').as_posix() for sub in ('tiny', 'pretrain', 'mcloud')
                     for p in (ROOT / 'yamls' / sub).rglob('*.yaml'))
    assert written == shipped
    for rel in written:
        assert (out / rel).read_text() == (ROOT / 'yamls' / rel).read_text(), rel
