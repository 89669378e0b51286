"""The prepared folder: which split a document goes to, ``seq_len``-token MDS samples, and the
check a training run makes before it reads a split.

Layout: ``tokenizer/``, ``train/`` and ``val/`` (MDS, one ``tokens`` column, ``ndarray:int32``)
and ``prepare.json`` (the options it was built with and the samples per split). Importing this
module costs the standard library only (numpy and streaming load when a split is written), so a
training run can call :func:`check_split` early.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST = 'prepare.json'
SPLITS = ('train', 'val')


def is_val(doc: str, val_percent: float) -> bool:
    """Whether ``doc`` goes to val: a hash of its text, so the split does not depend on the order."""
    return zlib.crc32(doc.encode('utf-8')) % 10000 < val_percent * 100


def splits_written(val_percent: float) -> tuple[str, ...]:
    """``val_percent`` 0 writes a train-only folder, 100 an eval-only one (e.g. WikiText)."""
    if val_percent <= 0:
        return ('train',)
    if val_percent >= 100:
        return ('val',)
    return SPLITS


class SampleWriter:
    """One split's MDS writer: token arrays in, ``seq_len``-token samples out.

    Tokens run on from one call to the next (documents are concatenated, EOS-separated); the
    tail shorter than a sample is dropped at :meth:`finish`. Memory holds less than a sample of
    tokens and the samples of the shard being filled: at most ``streaming``'s default size limit,
    64 MB (16 M tokens), twice over while the shard is joined and written.
    """

    def __init__(self, out: Path, seq_len: int) -> None:
        import numpy as np
        from streaming import MDSWriter

        self._np = np
        self._writer = MDSWriter(out=str(out), columns={'tokens': 'ndarray:int32'}, compression=None)
        self._carry = np.zeros(0, dtype=np.int32)
        self.seq_len = seq_len
        self.samples = 0
        self.tokens = 0
        """Tokens given (EOS included), the dropped tail too."""

    def write(self, tokens) -> None:
        buf = self._np.concatenate([self._carry, tokens]) if len(self._carry) else tokens
        full = len(buf) // self.seq_len * self.seq_len
        for start in range(0, full, self.seq_len):
            self._writer.write({'tokens': buf[start:start + self.seq_len]})
        self._carry = buf[full:].copy()
        self.samples += full // self.seq_len
        self.tokens += len(tokens)

    def finish(self) -> None:
        self._writer.finish()


def with_eos(ids: list[list[int]], eos: int):
    """Documents' token ids as one int32 array, an EOS after each document."""
    import numpy as np
    flat: list[int] = []
    for doc in ids:
        flat += doc
        flat.append(eos)
    return np.array(flat, dtype=np.int32)


def check_split(local: str | Path, split: str | None, remote: str | None = None) -> None:
    """Raise ValueError, naming the split and the ``prepare`` option that makes it, when the MDS
    folder a loader will read (``local``/``split``) has no ``index.json``.

    A loader with a ``remote`` downloads the index into ``local`` itself: nothing to check here.
    """
    if remote:
        return
    folder = Path(local)
    index = folder / split / 'index.json' if split else folder / 'index.json'
    if index.is_file():
        return
    where = f'split {split!r} of {local}' if split else f'{local}'
    manifest = folder / MANIFEST
    if not folder.is_dir():
        hint = f'the folder does not exist; `wesar-foundry prepare --out {local}` makes train and val'
    elif manifest.is_file():
        cfg = json.loads(manifest.read_text()).get('config', {})
        vp = cfg.get('val_percent')
        if split == 'val' and vp is not None and vp <= 0:
            hint = (f'it was prepared with --val-percent {vp:g} (train only); prepare it again with --val-percent > 0 '
                    '(e.g. 5), or give the eval loader another folder')
        elif split == 'train' and vp is not None and vp >= 100:
            hint = (f'it was prepared with --val-percent {vp:g} (an eval-only set); prepare it again with '
                    '--val-percent < 100 (e.g. 5) to train on it')
        elif split not in SPLITS:
            hint = f'`wesar-foundry prepare` writes the splits {", ".join(SPLITS)} only'
        else:
            hint = 'the folder is incomplete; run `wesar-foundry prepare` again with --force'
    else:
        hint = (f'{local} holds no {MANIFEST}, so `wesar-foundry prepare` did not make it; `wesar-foundry prepare '
                f'--out {local}` makes train and val (--val-percent sets val\'s share)')
    raise ValueError(f'{where} has no {index.relative_to(folder)}: {hint}')


def check_loader_splits(train_config: Mapping[str, Any]) -> None:
    """:func:`check_split` for every ``text`` loader of an llm-foundry train config (``train_loader``
    and ``eval_loader`` or ``eval_loaders``, a mapping or a list of them; ``dataset.local``/
    ``split``/``remote`` or ``dataset.streams``). Takes a plain dict or an OmegaConf ``DictConfig``
    with its variables resolved (what llm-foundry hands a ``callbacks_with_config`` callback)."""
    loaders: list[tuple[str, Any]] = [('train_loader', train_config.get('train_loader'))]
    eval_key = 'eval_loader' if train_config.get('eval_loader') is not None else 'eval_loaders'
    eval_loader = train_config.get(eval_key)
    if isinstance(eval_loader, Mapping) or eval_loader is None:
        loaders.append((eval_key, eval_loader))
    else:
        loaders += [(f'{eval_key}[{i}]', e) for i, e in enumerate(eval_loader)]
    for key, loader in loaders:
        if not isinstance(loader, Mapping) or loader.get('name') != 'text':
            continue
        dataset = loader.get('dataset') or {}
        streams = dataset.get('streams') or {}
        for stream in [dataset] + list(streams.values()):
            local = stream.get('local')
            if local is None:
                continue
            try:
                check_split(local, stream.get('split', dataset.get('split')), stream.get('remote', dataset.get('remote')))
            except ValueError as e:
                raise ValueError(f'{key}: {e}') from None
