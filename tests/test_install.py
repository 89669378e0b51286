"""A non-editable install (``pip install .``, what the MosaicML job does, or a wheel) has everything
the commands need.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation``) from a copy of the
package and ``pyproject.toml`` (building in the checkout would write ``build/`` and an egg-info
into it), installed with ``pip install --target`` into a folder outside the source tree, and
imported from there by a fresh process (``PYTHONPATH``; the working folder is not the checkout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _package_files() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / 'wesar_foundry').rglob('*')
            if p.is_file() and '__pycache__' not in p.parts and p.suffix != '.pyc'}


def test_the_wheel_holds_every_file_of_the_package(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert _package_files() - names == set()
    assert {'wesar_foundry/commands/eval_tasks/wikitext_local.yaml', 'wesar_foundry/commands/eval_tasks/lambada_openai_local.yaml',
            'wesar_foundry/commands/eval_tasks/wesar_eval_utils.py', 'wesar_foundry/commands/tiny_yamls/wesar.yaml',
            'wesar_foundry/commands/tiny_yamls/mpt.yaml'} <= names


_CHILD = r'''
import json, sys
from pathlib import Path
import wesar_foundry
from wesar_foundry.commands.eval import TASK_DIR, EvalConfig, write_task_dir
model, wikitext, lambada, out = sys.argv[1:5]
cfg = EvalConfig(model_dir=model, wikitext_file=wikitext, lambada_file=lambada)
cfg.validate()  # the command's own check that the task folder holds every config it needs
write_task_dir(cfg, Path(out))
print(json.dumps({'package': wesar_foundry.__file__, 'task_dir': str(TASK_DIR),
                  'written': {p.name: p.read_text() for p in Path(out).iterdir()}}))
'''


def test_eval_finds_its_task_configs_in_the_installed_package(installed, tmp_path):
    _, site = installed
    model = tmp_path / 'model'
    model.mkdir()
    (model / 'config.json').write_text('{}')
    wikitext, lambada, out = tmp_path / 'wiki.test.tokens', tmp_path / 'lambada.jsonl', tmp_path / 'tasks'
    wikitext.write_text(' = A = \n')
    lambada.write_text('{"text": "a b"}\n')
    out.mkdir()
    env = {**os.environ, 'PYTHONPATH': str(site)}
    proc = subprocess.run([sys.executable, '-P', '-c', _CHILD, str(model), str(wikitext), str(lambada), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result['package']).is_relative_to(site) and Path(result['task_dir']).is_relative_to(site)
    written = result['written']
    assert sorted(written) == ['lambada_openai_local.yaml', 'wesar_eval_utils.py', 'wikitext_local.yaml']
    assert json.dumps(str(wikitext.resolve())) in written['wikitext_local.yaml']
    assert json.dumps(str(lambada.resolve())) in written['lambada_openai_local.yaml']


def test_the_console_script_is_declared(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(next(n for n in z.namelist() if n.endswith('.dist-info/entry_points.txt'))).decode()
    assert 'wesar-foundry = wesar_foundry.commands.cli:main' in entry_points
