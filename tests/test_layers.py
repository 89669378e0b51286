"""The package's layers: importing a folder loads no framework and no folder above it.

Each folder of ``wesar_foundry`` says in its docstring what it may import; these tests hold it
to that, importing every module of one folder in a fresh interpreter (``python -I``) and reading
``sys.modules``: an import at module level that runs upward fails here, not in a user's process.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

import wesar_foundry

# Frameworks, heaviest first: what each layer adds over the one below.
FRAMEWORKS = ('llmfoundry', 'composer', 'streaming', 'transformers', 'torch')
FOLDERS = ('core', 'files', 'reparam', 'models', 'export', 'data', 'foundry', 'commands')

# folder → (frameworks it may load when imported, wesar_foundry folders it may load).
RULES = {
    'core': ({'torch'}, {'core'}),
    'files': (set(), {'files'}),
    'reparam': ({'torch'}, {'core', 'reparam'}),
    'models': ({'torch', 'transformers'}, {'core', 'reparam', 'models'}),
    'export': ({'torch', 'transformers'}, {'core', 'files', 'reparam', 'models', 'export'}),
    'data': (set(), {'files', 'data'}),
    'foundry': (set(FRAMEWORKS), set(FOLDERS) - {'commands'}),
    # The CLI starts without torch: each subcommand imports what it needs when it runs.
    'commands': (set(), {'core', 'files', 'commands'}),
}

_PROBE = r'''
import importlib, json, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')
                          if '.eval_tasks' not in m.name]  # lm-eval task files, loaded by lm-eval only
for name in names:
    importlib.import_module(name)
print(json.dumps({'imported': names, 'modules': sorted(sys.modules)}))
'''


def loaded_by(package: str) -> dict:
    proc = subprocess.run([sys.executable, '-I', '-c', _PROBE, package], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_every_folder_of_the_package_has_a_rule():
    folders = {m.name for m in pkgutil.iter_modules(wesar_foundry.__path__) if m.ispkg}
    assert folders == set(FOLDERS) == set(RULES)


@pytest.mark.slow
@pytest.mark.parametrize('folder', FOLDERS)
def test_importing_a_folder_loads_only_what_its_rule_allows(folder):
    frameworks, folders = RULES[folder]
    seen = loaded_by(f'wesar_foundry.{folder}')
    assert len(seen['imported']) > 1, seen['imported']  # the folder and at least one module in it
    tops = {name.split('.')[0] for name in seen['modules']}
    assert sorted(set(FRAMEWORKS) & tops - frameworks) == []
    ours = {name.split('.')[1] for name in seen['modules'] if name.startswith('wesar_foundry.')}
    assert sorted(ours - folders - {'_moved'}) == []  # _moved: the package's own old-path finder (stdlib)


def test_each_folder_states_its_rule_in_its_docstring():
    for folder in FOLDERS:
        doc = importlib.import_module(f'wesar_foundry.{folder}').__doc__ or ''
        assert 'imports' in doc.splitlines()[0].lower(), (folder, doc)
