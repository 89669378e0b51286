"""Outputs appear whole or not at all: a staged folder or file replaces its target only on success."""

from __future__ import annotations

from pathlib import Path

import pytest

from wesar_foundry.files.atomic import staged_dir, write_text


def test_a_staged_folder_replaces_the_old_one_only_when_the_block_succeeds(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'old.txt').write_text('old')
    with pytest.raises(RuntimeError):
        with staged_dir(out) as staging:
            (staging / 'new.txt').write_text('half')
            raise RuntimeError('interrupted')
    assert sorted(p.name for p in out.iterdir()) == ['old.txt']
    with staged_dir(out) as staging:
        (staging / 'new.txt').write_text('new')
        assert not (out / 'new.txt').exists()  # nothing visible before the block ends
    assert sorted(p.name for p in out.iterdir()) == ['new.txt']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']  # no staging or trash left beside it


def test_a_written_file_leaves_no_temporary_sibling_and_a_failed_write_keeps_the_old_text(tmp_path):
    path = write_text(tmp_path / 'deep' / 'f.yaml', 'a: 1\n')
    assert path.read_text() == 'a: 1\n'
    with pytest.raises(TypeError):
        write_text(path, None)  # fails while writing the sibling
    assert path.read_text() == 'a: 1\n'
    assert [p.name for p in path.parent.iterdir()] == ['f.yaml']


def test_a_written_file_accepts_a_string_path(tmp_path):
    assert write_text(str(tmp_path / 'g.txt'), 'x') == Path(tmp_path / 'g.txt')
