"""The tests mirror the package: ``tests/<folder>/test_<module>[_<aspect>].py`` specifies
``wesar_foundry/<folder>/<module>.py``, and no two test files share a name.

Two kinds of file sit outside the mirror, each for a reason: ``tests/distributed/`` (scenarios
over two real ranks, the second tier) and the package-wide specifications at ``tests/``'s top.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, TESTS = ROOT / 'wesar_foundry', ROOT / 'tests'
# What the top-level test files specify: the package as a whole.
PACKAGE_WIDE = {
    'test_docs.py': "the README's and docs/' commands, run as written",
    'test_entry_points.py': 'every name registered in pyproject.toml conforms to llm-foundry',
    'test_install.py': 'the wheel and the console script',
    'test_layers.py': 'what each folder may import',
    'test_layout.py': 'this mirror',
    'test_moved.py': "0.1's module paths (wesar_foundry/_moved.py)",
}


def all_test_files():
    return sorted(p for p in TESTS.rglob('test_*.py'))


def modules_in(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob('*.py') if p.stem != '__init__'}


def test_no_two_test_files_share_a_name():
    names = [p.name for p in all_test_files()]
    assert names  # the suite is found where this test looks
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_every_test_file_names_a_module_of_its_mirrored_folder():
    strays = []
    mirrored = [p for p in all_test_files() if p.parent != TESTS and 'distributed' not in p.relative_to(TESTS).parts]
    assert mirrored
    for path in mirrored:
        folder = PACKAGE / path.parent.relative_to(TESTS)
        name = path.stem[len('test_'):]
        if not any(name == m or name.startswith(m + '_') for m in modules_in(folder)):
            strays.append(str(path.relative_to(ROOT)))
    assert strays == []


def test_the_top_level_test_files_are_the_package_wide_ones():
    assert sorted(p.name for p in TESTS.glob('test_*.py')) == sorted(PACKAGE_WIDE)
