"""The tiny CPU train YAMLs (``tiny_yamls/``, package data; ``yamls/tiny`` in a checkout links to it).

One per model family, each a complete ``llmfoundry train`` config that runs in minutes on a
laptop's CPU on ``wesar-foundry prepare``'s default corpus, and writes everything under
``runs/<run_name>/``: ``metrics.jsonl``, the Composer checkpoint (``checkpoints/``) and the merged
stock export (``huggingface/ba<N>``). ``wesar-foundry configs`` copies them to ``<out>/tiny/``, so
a pip install has them without the repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_DIR = Path(__file__).resolve().parent / 'tiny_yamls'


def tiny_yamls() -> list[Path]:
    """The shipped tiny YAMLs, by name."""
    return sorted(TINY_DIR.glob('*.yaml'))


def write_tiny(out: Path) -> list[Path]:
    """Copy every tiny YAML into ``out`` byte for byte (``out``: a staged folder, see ``files.atomic.staged_dir``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(src, out / src.name)) for src in tiny_yamls()]
