"""``jsonl``: a local metrics file, one JSON object per ``log_metrics`` call (registered in
llm-foundry's ``loggers``), read back by ``wesar_foundry.commands.plot``.

Lines are ``{"step": <batch>, "<key>": <value>, ...}``; the first line is
``{"run_name": ..., "hparams": {...}}`` once hyperparameters are known. Steps are Composer's
``timestamp.batch`` at the time of the call (the training loss of batch t is logged at t − 1,
metrics logged at ``BATCH_END`` at t).

**Resumption.** The logger's checkpointed state is the file's length at the checkpoint. A run
resumed from that checkpoint (autoresume after a preemption, or ``load_path``) cuts the file back
to that length and appends: the steps the interrupted run logged after its last checkpoint are
run and logged again, so every step appears exactly once. The file is therefore opened at
``FIT_START``, after the checkpoint is loaded; what is logged before is buffered.

**On an object store.** ``path`` may be a URI (``s3://<bucket>/<run>/metrics.jsonl``; the paper
YAMLs use ``${variables.save_folder}/metrics.jsonl``), so the file outlives the machine. The logger
writes a local copy (``{run_name}/<file name>`` in the working folder) and uploads it, synchronously
through Composer's object store, whenever its state is taken for a checkpoint (before the
checkpoint is written, so a checkpoint never records more of the file than the store holds) and
at the end of fit and at close. A resumed run downloads it first, then cuts it back as above, so a
restart on a fresh machine continues the same file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from wesar_foundry.files.remote import Store, is_uri, split_uri

log = logging.getLogger(__name__)


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # 'nan' / 'inf': strict JSON has no such numbers
    return v


class JSONLLogger(LoggerDestination):
    """Write every logged metric to ``path`` as JSON lines, each flushed as it is written.

    Args:
        path: output file, local or an object store URI (``s3://...``); ``{run_name}`` and ``{rank}`` are
            filled in. Default ``{run_name}/metrics.jsonl``.
        all_ranks: write one file per rank (``path`` must then contain ``{rank}``); default rank 0 only.
        overwrite: replace an existing file when the run starts from scratch, instead of failing
            (a resumed run always continues its file).
    """

    def __init__(self, path: str = '{run_name}/metrics.jsonl', all_ranks: bool = False, overwrite: bool = True) -> None:
        if not isinstance(path, str) or not path:
            raise ValueError(f'loggers.jsonl.path={path!r} must be a non-empty string')
        if all_ranks and '{rank}' not in path:
            raise ValueError(f'loggers.jsonl.path={path!r} must contain {{rank}} when all_ranks is true')
        self.path_template = path
        self.all_ranks = bool(all_ranks)
        self.overwrite = bool(overwrite)
        self.path: Path | None = None
        self._file = None
        self._pending: list[str] = []
        self._header: dict[str, Any] = {}
        self._resume_offset: int | None = None
        self.uri: str | None = None
        """The object store copy, when ``path`` is a URI (``self.path`` is then the local copy)."""
        self._store: Store | None = None

    @property
    def _enabled(self) -> bool:
        return self.all_ranks or dist.get_global_rank() == 0

    def init(self, state: State, logger: Logger) -> None:
        if not self._enabled:
            return
        path = self.path_template.format(run_name=state.run_name, rank=dist.get_global_rank())
        if is_uri(path):
            self.uri = path
            self.path = Path(state.run_name) / path.rstrip('/').rsplit('/', 1)[-1]
            self._store = Store(path)
            self._store.exists(split_uri(path)[1])  # a bad bucket or missing credentials fail here, before training
        else:
            self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def fit_start(self, state: State, logger: Logger) -> None:
        if not self._enabled or self._file is not None:
            return
        resumed = int(state.timestamp.batch) > 0
        if resumed and self.uri is not None:
            self._download()
        if resumed and self._resume_offset is not None and self.path.exists():
            self._file = open(self.path, 'r+', encoding='utf-8')
            # Drop what the interrupted run logged after its checkpoint: those steps run again.
            self._file.truncate(min(self._resume_offset, self.path.stat().st_size))
            self._file.seek(0, os.SEEK_END)
        elif resumed and self.path.exists():
            log.warning('loggers.jsonl: resumed from a checkpoint that holds no jsonl state (or none for this '
                        'rank); appending to %s, so steps logged after that checkpoint may appear twice', self.path)
            self._file = open(self.path, 'a', encoding='utf-8')
        else:
            if self.path.exists() and not self.overwrite:
                raise FileExistsError(f'loggers.jsonl: {self.path} exists and this run starts from scratch '
                                      '(set overwrite: true to replace it)')
            self._file = open(self.path, 'w', encoding='utf-8')
            self._write({'run_name': state.run_name, **self._header})
        for line in self._pending:
            self._file.write(line)
        self._pending = []

    def state_dict(self) -> dict[str, Any]:
        # The file's length at this checkpoint (-1: nothing written yet), with the rank it belongs
        # to: a sharded checkpoint keeps only rank 0's copy of such values, which is all the
        # default (rank 0 writes) needs; with all_ranks, the other ranks append instead.
        offset = -1
        if self._file is not None:
            self._file.flush()
            offset = self._file.tell()
            self._upload()  # before the checkpoint that records `offset` is written
        return {'offset': offset, 'rank': dist.get_global_rank()}

    def _upload(self) -> None:
        if self.uri is not None and self.path is not None and self.path.is_file():
            self._store.upload(self.path, split_uri(self.uri)[1])

    def _download(self) -> None:
        """The object store's copy replaces the local one (which a fresh machine does not have)."""
        try:
            self._store.download(split_uri(self.uri)[1], self.path)
        except FileNotFoundError:
            where = f'the local copy {self.path}' if self.path.exists() else 'a new file'
            log.warning('loggers.jsonl: resumed, but %s does not exist; continuing %s', self.uri, where)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        offset = int(state.get('offset', -1))
        mine = int(state.get('rank', 0)) == dist.get_global_rank()
        self._resume_offset = offset if offset >= 0 and mine else None

    def _write(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, default=str) + '\n'
        if self._file is None:
            self._pending.append(line)
        else:
            # Flushed line by line: a run that dies (divergence stop, preemption) keeps its last steps.
            self._file.write(line)
            self._file.flush()

    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if self._file is None:
            self._header.setdefault('hparams', {}).update(hyperparameters)
        else:
            self._write({'hparams': hyperparameters})

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self._enabled or not metrics:
            return
        self._write({'step': step, **{k: _jsonable(v) for k, v in metrics.items()}})

    def fit_end(self, state: State, logger: Logger) -> None:
        if self._file is not None:
            self._file.flush()
            self._upload()

    def close(self, state: State, logger: Logger) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self._upload()
