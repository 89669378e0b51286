"""Test-only callbacks (registered in llm-foundry's real registry so ``train()`` builds them) and log readers."""

from __future__ import annotations

import re

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry.registry import callbacks

from wesar_foundry.core.ratios import clean_name


class ParamRecorder(Callback):
    """Brute force: fp64 copies of every parameter right before and right after each optimizer step."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}
        self.lrs: dict[int, list[float]] = {}

    def _copy(self, state: State) -> dict[str, torch.Tensor]:
        return {clean_name(n): p.detach().double().clone() for n, p in state.model.named_parameters()}

    def after_train_batch(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch) + 1
        self.before[step] = self._copy(state)
        self.lrs[step] = [g['lr'] for g in state.optimizers[0].param_groups]

    def batch_end(self, state: State, logger: Logger) -> None:
        self.after[int(state.timestamp.batch)] = self._copy(state)


class LrJump(Callback):
    """Multiplies the lr of the param group holding exactly the parameters matching ``match`` at one step."""

    def __init__(self, match: str, step: int, factor: float) -> None:
        self.match, self.step, self.factor = re.compile(match), step, factor

    def batch_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) + 1 != self.step:
            return
        targets = {id(p) for n, p in state.model.named_parameters() if self.match.search(n)}
        groups = [g for g in state.optimizers[0].param_groups if {id(p) for p in g['params']} == targets]
        assert len(groups) == 1, 'give the target matrix its own optimizer param group'
        # The scheduler rewrites lr after the step, so this is a one-step jump.
        groups[0]['lr'] *= self.factor


class SetEntries(Callback):
    """Before step ``step``'s forward, sets entry ``index`` of each parameter ``name`` (cleaned) to ``value``
    (``entries``: a list of ``{name, index, value}``)."""

    def __init__(self, step: int, entries: list) -> None:
        self.step, self.entries = step, [dict(e) for e in entries]

    def batch_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) + 1 != self.step:
            return
        params = {clean_name(n): p for n, p in state.model.named_parameters()}
        with torch.no_grad():
            for e in self.entries:
                params[e['name']][e['index']] = e['value']


callbacks.register('test_param_recorder', func=ParamRecorder)
callbacks.register('test_lr_jump', func=LrJump)
callbacks.register('test_set_entries', func=SetEntries)


def find(trainer, cls):
    return next(cb for cb in trainer.state.callbacks if isinstance(cb, cls))


def in_memory(trainer):
    return next(d for d in trainer.logger.destinations if type(d).__name__ == 'InMemoryLogger')


def logged(trainer, key: str) -> dict[int, float]:
    """{step: value} of a logged key."""
    return {int(ts.batch): float(v) for ts, v in in_memory(trainer).data.get(key, [])}
