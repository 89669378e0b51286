"""Files and folders that appear whole or not at all (stdlib only): write a sibling, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out`` to write into.

    When the block succeeds the sibling takes ``out``'s place (an existing ``out`` is moved aside
    first and removed only after the swap); when it raises, the sibling is deleted and ``out`` is
    untouched. Whether replacing ``out`` is allowed is the caller's decision, made beforehand.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename stays on one filesystem (atomic).
    staging = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
    try:
        yield staging
        if out.exists() or out.is_symlink():
            trash = out.parent / f'.{out.name}.old-{uuid.uuid4().hex[:8]}'
            out.rename(trash)
            staging.rename(out)
            if trash.is_dir():
                shutil.rmtree(trash, ignore_errors=True)
            else:
                trash.unlink()
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic on one filesystem
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
