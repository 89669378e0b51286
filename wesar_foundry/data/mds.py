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

from wesar_foundry.files.remote import Store, is_uri, join, split_uri

MANIFEST = 'prepare.json'
SPLITS = ('train', 'val')
# Everything `prepare` writes at the top of a dataset. A folder (or object-store prefix) holding
# anything else is not prepare's to replace, --force or not: --force would delete the rest with it.
PREPARED_ENTRIES = frozenset({MANIFEST, 'tokenizer', *SPLITS})


def foreign_entries(names) -> list[str]:
    """The relative paths among ``names`` that ``prepare`` does not write (sorted)."""
    return sorted(n for n in names if n.split('/', 1)[0] not in PREPARED_ENTRIES)


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


# The shipped paper YAMLs set each loader's dataset through these variables.
_YAML_VARIABLES = {'train_loader': 'data', 'eval_loader': 'eval_data'}


def _set_keys(key: str) -> str:
    """The config keys that point a loader at its data, for error messages."""
    loader = key.split('.', 1)[0].split('[', 1)[0]
    var = _YAML_VARIABLES.get(loader, 'eval_data' if loader == 'eval_loaders' else None)
    yaml = (f'variables.{var}_remote or variables.{var}_local' if var else
            'variables.data_remote / variables.data_local (train), variables.eval_data_remote / '
            'variables.eval_data_local (eval)')
    return (f'set {key}.remote (an object store URI, e.g. s3://<bucket>/<prefix>) or {key}.local (a prepared folder); '
            f'in the shipped YAMLs: {yaml}')


def check_split(local: str | Path | None, split: str | None, remote: str | None = None, key: str = 'dataset') -> None:
    """Raise ValueError, naming the split, the config key (``key``: the loader's ``dataset``) and the
    ``prepare`` command that makes it, when the MDS split a loader will read has no ``index.json``.

    With a ``remote``, the remote's index is checked (streaming downloads it into ``local``), and
    a remote a ``prepare`` upload left unfinished (shards, no index) is named as such. Without
    one, ``local`` must exist (a placeholder path that does not is refused with the keys to set).
    """
    if remote:
        _check_remote_split(str(remote), split, key)
        return
    if local is None:
        raise ValueError(f'{key} has neither local nor remote: {_set_keys(key)}')
    folder = Path(local)
    index = folder / split / 'index.json' if split else folder / 'index.json'
    if index.is_file():
        return
    where = f'split {split!r} of {local}' if split else f'{local}'
    manifest = folder / MANIFEST
    if not folder.is_dir():
        hint = (f'{key}.local={local} does not exist and {key}.remote is not set: {_set_keys(key)}; '
                f'`wesar-foundry prepare --out {local}` makes train and val there')
    elif manifest.is_file():
        cfg = json.loads(manifest.read_text()).get('config', {})
        hint = _split_hint(split, cfg.get('val_percent'), f'run `wesar-foundry prepare --out {local}` again with --force')
    else:
        hint = (f'{local} holds no {MANIFEST}, so `wesar-foundry prepare` did not make it; `wesar-foundry prepare '
                f'--out {local}` makes train and val (--val-percent sets val\'s share)')
    raise ValueError(f'{where} has no {index.relative_to(folder)}: {hint}')


def _split_hint(split: str | None, vp: float | None, incomplete: str) -> str:
    if split == 'val' and vp is not None and vp <= 0:
        return (f'it was prepared with --val-percent {vp:g} (train only); prepare it again with --val-percent > 0 '
                '(e.g. 5), or give the eval loader another folder')
    if split == 'train' and vp is not None and vp >= 100:
        return (f'it was prepared with --val-percent {vp:g} (an eval-only set); prepare it again with '
                '--val-percent < 100 (e.g. 5) to train on it')
    if split not in SPLITS:
        return f'`wesar-foundry prepare` writes the splits {", ".join(SPLITS)} only'
    return f'the folder is incomplete; {incomplete}'


def _check_remote_split(remote: str, split: str | None, key: str) -> None:
    """check_split for ``remote``: an object store URI, or a local folder streaming copies from."""
    if not is_uri(remote):
        if not (Path(remote) / (split or '') / 'index.json').is_file():
            raise ValueError(f'{key}.remote={remote} has no {split + "/" if split else ""}index.json: '
                             f'`wesar-foundry prepare --out {remote}` makes train and val there')
        return
    index = join(split or '', 'index.json')
    prepare_cmd = f'`wesar-foundry prepare --out {remote}`'
    try:
        store, (_, prefix) = Store(remote), split_uri(remote)
        if store.exists(join(prefix, index)):
            return
        if store.exists(join(prefix, MANIFEST)):
            cfg = json.loads(store.read_text(join(prefix, MANIFEST))).get('config', {})
            hint = _split_hint(split, cfg.get('val_percent'), f'run {prepare_cmd} again with --force')
        elif store.keys(prefix):
            hint = (f'it holds objects but no {MANIFEST}: an unfinished {prepare_cmd} upload (the indexes and the '
                    f'manifest go up last), or not a dataset prepare made; run {prepare_cmd} again with --force')
        else:
            hint = f'nothing is there; {prepare_cmd} prepares a dataset and uploads it there'
    except ValueError as e:
        raise ValueError(f'{key}.remote={remote}: {e}') from None
    raise ValueError(f'{key}.remote={remote} has no {index} (split {split!r}): {hint}')


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
        if streams:  # each stream names its own data; the dataset's local/remote are their defaults
            named = [(f'{key}.dataset.streams.{name}', stream) for name, stream in streams.items()]
        else:
            named = [(f'{key}.dataset', dataset)]
        for where, stream in named:
            try:
                check_split(stream.get('local'), stream.get('split', dataset.get('split')),
                            stream.get('remote', dataset.get('remote')), key=where)
            except ValueError as e:
                raise ValueError(f'{key}: {e}') from None
