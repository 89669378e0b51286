"""The module paths of 0.1 still resolve for one release, to the same objects, with a warning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from wesar_foundry._moved import MOVED


@pytest.mark.parametrize('old', sorted(MOVED))
def test_an_old_path_is_the_new_module_and_warns_naming_it(old):
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=rf'{old} moved to {MOVED[old]}'):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])


def test_python_dash_m_on_an_old_path_runs_the_new_module():
    proc = subprocess.run([sys.executable, '-m', 'wesar_foundry.cli', '--help'], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'usage: wesar-foundry' in proc.stdout
    assert 'wesar_foundry.cli moved to wesar_foundry.commands.cli' in proc.stderr
