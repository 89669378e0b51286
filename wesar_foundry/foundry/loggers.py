"""``jsonl``: a local metrics file, one JSON object per ``log_metrics`` call (registered in
llm-foundry's ``loggers``), read back by ``wesar_foundry.plot``.

Lines are ``{"step": <batch>, "<key>": <value>, ...}``; the first line is
``{"run_name": ..., "hparams": {...}}`` once hyperparameters are known. Steps are Composer's
``timestamp.batch`` at the time of the call (the training loss of batch t is logged at t − 1,
metrics logged at ``BATCH_END`` at t).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # 'nan' / 'inf': strict JSON has no such numbers
    return v


class JSONLLogger(LoggerDestination):
    """Write every logged metric to ``path`` as JSON lines, flushed at each batch end.

    Args:
        path: output file; ``{run_name}`` and ``{rank}`` are filled in. Default
            ``{run_name}/metrics.jsonl``.
        all_ranks: write one file per rank (``path`` must then contain ``{rank}``); default rank 0 only.
        overwrite: replace an existing file instead of failing.
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

    @property
    def _enabled(self) -> bool:
        return self.all_ranks or dist.get_global_rank() == 0

    def init(self, state: State, logger: Logger) -> None:
        if not self._enabled:
            return
        self.path = Path(self.path_template.format(run_name=state.run_name, rank=dist.get_global_rank()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f'loggers.jsonl: {self.path} exists (set overwrite: true to replace it)')
        self._file = open(self.path, 'w', encoding='utf-8')
        self._write({'run_name': state.run_name, **self._header})
        for line in self._pending:
            self._file.write(line)
        self._pending = []

    def _write(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, default=str) + '\n'
        if self._file is None:
            self._pending.append(line)
        else:
            self._file.write(line)

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

    def _flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def batch_end(self, state: State, logger: Logger) -> None:
        self._flush()

    def fit_end(self, state: State, logger: Logger) -> None:
        self._flush()

    def close(self, state: State, logger: Logger) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
