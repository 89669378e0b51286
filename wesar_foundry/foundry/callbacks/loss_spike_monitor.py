"""``loss_spike_monitor``: online loss-spike detection that says which matrix moved."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from composer.callbacks import CheckpointSaver
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist, ensure_tuple

from wesar_foundry.core.divergence import all_finite
from wesar_foundry.core.options import takes_options
from wesar_foundry.core.spikes import SpikeDetector, SpikeRule
from wesar_foundry.foundry.callbacks.update_ratio_monitor import (
    Measurement, UpdateRatioMonitor, check_ratio_source, find_or_create,
)

log = logging.getLogger(__name__)

KEY = 'callbacks.loss_spike_monitor'
ACTIONS = ('log', 'stop')
NONFINITE_ACTIONS = ('stop', 'skip')


class LossSpikeError(RuntimeError):
    """Raised by ``loss_spike_monitor`` with ``action: stop`` on the first step of a spike."""


class NonFiniteLossError(LossSpikeError):
    """Raised by ``loss_spike_monitor`` when a step's loss or gradient is not finite, before the
    optimizer applies that step (``nonfinite: stop``, or too many consecutive skips)."""


@dataclass
class LossSpikeConfig(SpikeRule):
    """Options of ``loss_spike_monitor`` (every YAML key under it): the rule's (``window``, ``k``,
    ``warmup``, ``min_rise``: ``wesar_foundry.core.spikes.SpikeRule``), then the callback's own."""

    action: str = 'log'
    """'log' (record and keep training) or 'stop' (raise LossSpikeError on the first spike)."""
    top_k: int = 5
    """How many matrices with the largest update ratios each spike record names."""
    ratios: str = 'auto'
    """Where those ratios come from: 'auto' (update_ratio_monitor if the run has one, else measure every
    step here, at the cost of the monitor at interval 1), 'monitor' (only from update_ratio_monitor), 'none'."""
    loss_key: str = 'loss/train/total'
    """The logged loss to watch (averaged over ranks by Composer, so every rank decides alike)."""
    nonfinite: str = 'stop'
    """A step whose loss or gradient is not finite: 'stop' (raise before the optimizer applies it, so no
    checkpoint of diverged weights is ever written) or 'skip' (drop that step's update and go on)."""
    max_skips: int = 3
    """With nonfinite: skip, raise anyway after this many consecutive skipped steps."""
    check_grads: bool = True
    """Also check the gradients (one read of the local gradients per step), not only the loss."""

    def __post_init__(self) -> None:
        self.check(KEY)
        if self.action not in ACTIONS:
            raise ValueError(f'{KEY}.action={self.action!r}; allowed: {", ".join(ACTIONS)}')
        self.ratios = check_ratio_source(self.ratios, KEY)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f'{KEY}.top_k={self.top_k!r} must be an integer >= 1')
        if self.nonfinite not in NONFINITE_ACTIONS:
            raise ValueError(f'{KEY}.nonfinite={self.nonfinite!r}; allowed: {", ".join(NONFINITE_ACTIONS)}')
        if isinstance(self.max_skips, bool) or not isinstance(self.max_skips, int) or self.max_skips < 1:
            raise ValueError(f'{KEY}.max_skips={self.max_skips!r} must be an integer >= 1')
        if not isinstance(self.check_grads, bool):
            raise ValueError(f'{KEY}.check_grads={self.check_grads!r} must be true or false')


class LossSpikeMonitor(Callback):
    """Flags loss spikes online (rule: ``wesar_foundry.core.spikes``) and records what moved.

    Logged every step: ``loss_spike/count`` (running number of spikes). On the first step of a
    spike also ``loss_spike/loss``, ``loss_spike/threshold``, ``loss_spike/window_mean`` and
    ``loss_spike/window_std``, and a warning naming the ``top_k`` matrices with the largest update
    ratios at the spike step and at the measured step just before it (from
    ``update_ratio_monitor``, whose latest measurements are used when it logs less often).
    Records accumulate in ``self.spikes``; they and the detector's window are saved in
    checkpoints, so a resumed run keeps its count and its window.

    Steps are 1-based optimizer steps (``state.timestamp.batch`` at ``BATCH_END``), as in
    ``update_ratio_monitor``.

    **Divergence.** After every backward (``AFTER_TRAIN_BATCH``: gradients ready, the optimizer not
    yet stepped) every rank checks its loss and, with ``check_grads``, its gradients, and one
    all-reduce makes the verdict common. A non-finite step is logged (``loss_spike/nonfinite``,
    ``loss_spike/nonfinite_step``) and then, by ``nonfinite``: ``stop`` raises
    ``NonFiniteLossError`` naming the step and the matrices with the largest update ratios just
    before it, so the weights stay those of the last good step; ``skip`` drops every gradient so
    the optimizer applies nothing (weights and optimizer state stay as they were), counts the step
    (``loss_spike/skipped``) and goes on, until ``max_skips`` consecutive skips. In both modes no
    checkpoint of non-finite weights is written: before each checkpoint the weights are checked
    too, and a non-finite one stops the run before the checkpoint saver runs, so ``latest`` and
    the kept checkpoints stay those of the last finite state.
    """

    @takes_options(LossSpikeConfig, KEY)
    def __init__(self, config: LossSpikeConfig) -> None:
        self.config = config
        self.detector = SpikeDetector(config)  # the config is the rule, with the callback's keys besides
        self.spikes: list[dict[str, Any]] = []
        self._monitor: UpdateRatioMonitor | None = None
        self._own_monitor = False
        self.nonfinite_steps = 0
        self.skipped = 0
        self._consecutive_skips = 0

    def fit_start(self, state: State, logger: Logger) -> None:
        self._check_loss_key(state)
        # A private monitor measures every step, so that a record always has the spike step itself.
        self._monitor, self._own_monitor = find_or_create(state, logger, self.config.ratios, 'loss_spike_monitor',
                                                          'spike records will name no matrices', interval=1, history=2)

    def after_train_batch(self, state: State, logger: Logger) -> None:
        if self._own_monitor:
            self._monitor.after_train_batch(state, logger)
        if _any_rank(state, not self._step_is_finite(state)):
            self._on_nonfinite(state, logger)
        else:
            self._consecutive_skips = 0

    def fit_end(self, state: State, logger: Logger) -> None:
        if self._own_monitor:
            self._monitor.fit_end(state, logger)

    def _step_is_finite(self, state: State) -> bool:
        losses = state.loss.values() if isinstance(state.loss, dict) else ensure_tuple(state.loss)
        if not all_finite(t for t in losses if isinstance(t, torch.Tensor)):
            return False
        return not self.config.check_grads or all_finite(p.grad for p in state.model.parameters())

    def _on_nonfinite(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch) + 1  # the optimizer step about to be taken
        before, _ = self._tops(step - 1)  # the latest measurement before this step
        skip = self.config.nonfinite == 'skip' and self._consecutive_skips < self.config.max_skips
        if skip:
            # No gradient, no update: the optimizer leaves these weights and their state alone.
            for p in state.model.parameters():
                p.grad = None
            self.skipped += 1
            self._consecutive_skips += 1
        # Its own count: a non-finite gradient under a finite loss is one too, which the detector never sees.
        self.nonfinite_steps += 1
        logger.log_metrics({'loss_spike/nonfinite': self.nonfinite_steps, 'loss_spike/nonfinite_step': step,
                            'loss_spike/skipped': self.skipped})
        text = f'non-finite loss or gradient at step {step}'
        if before:
            text += ('; largest update ratios before it (step {}): '.format(before['step'])
                     + ', '.join(f'{n} {r:.3g}' for n, r in before['top']))
        if skip:
            log.warning(f'{text}; skipped (update not applied, {self._consecutive_skips} in a row, '
                        f'nonfinite: skip stops after {self.config.max_skips})')
            return
        if self.config.nonfinite == 'skip':
            why, hint = f'{self.config.max_skips} consecutive steps were skipped', 'or raise loss_spike_monitor.max_skips'
        else:
            why, hint = 'nonfinite: stop', 'or set loss_spike_monitor.nonfinite: skip to drop such steps'
        raise NonFiniteLossError(f'{text}. Training stopped before this update was applied ({why}): the weights and '
                                 f'the last checkpoint are those of the last finite step. Lower the learning rate, {hint}')

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        self._refuse_nonfinite_weights(state, Event.BATCH_CHECKPOINT)

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        self._refuse_nonfinite_weights(state, Event.EPOCH_CHECKPOINT)

    @torch.no_grad()
    def _refuse_nonfinite_weights(self, state: State, event: Event) -> None:
        # Runs before Composer's checkpoint saver (always the last callback): a raise here means
        # no checkpoint of these weights, no rotation of older ones, and `latest` left alone.
        # The checkpoint events come every batch: check (a pass over the weights and a
        # collective) only when a saver saves now, by its own test (same on every rank), which
        # also skips the epoch event of a batch whose checkpoint was written at its batch event.
        batch = state.timestamp.batch
        savers = [cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)]
        if not any(cb.save_interval(state, event) and cb.last_checkpoint_batch != batch for cb in savers):
            return
        if _any_rank(state, not all_finite(state.model.parameters())):
            raise NonFiniteLossError(f'non-finite weights at step {int(state.timestamp.batch)}: not saving a checkpoint '
                                     'of them; the last saved checkpoint is the last finite one')

    def _check_loss_key(self, state: State) -> None:
        """Before any compute, for models that declare their losses (``loss_names``, as ours do)."""
        names = getattr(state.model, 'loss_names', None)
        if names is None:
            return
        keys = [f'loss/train/{n}' for n in names]
        if self.config.loss_key not in keys:
            raise ValueError(f'{KEY}.loss_key={self.config.loss_key!r} is never logged by this '
                             f'model; allowed: {", ".join(keys)}')

    def _loss(self, state: State) -> float:
        # The all-reduced losses Composer logs: every rank reads the same value, so with
        # action: stop every rank stops alike (a rank-local fallback could make them disagree).
        value = state.total_loss_dict.get(self.config.loss_key)
        if value is None:
            raise ValueError(f'{KEY}.loss_key={self.config.loss_key!r} was not logged at step '
                             f'{int(state.timestamp.batch)}; logged: {", ".join(sorted(state.total_loss_dict)) or "nothing"}')
        return float(value)

    def _tops(self, step: int) -> tuple[dict | None, dict | None]:
        hist: list[Measurement] = list(self._monitor.history) if self._monitor is not None else []
        at = [m for m in hist if m.step <= step]
        if not at:
            return None, None
        before = [m for m in at if m.step < at[-1].step]
        k = self.config.top_k
        fmt = lambda m: {'step': m.step, 'top': [[n, r] for n, r in m.top(k)]}  # noqa: E731
        return fmt(at[-1]), (fmt(before[-1]) if before else None)

    def batch_end(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        if self._monitor is not None:
            self._monitor.measure(state)  # every rank, whatever the callback order
        loss = self._loss(state)
        v = self.detector.update(loss)
        metrics = {'loss_spike/count': self.detector.count}
        if v.new_spike:
            at, before = self._tops(step)
            record = {'step': step, 'loss': loss, 'window_mean': v.mean, 'window_std': v.std,
                      'threshold': v.threshold, 'k': self.config.k, 'ratios_at': at, 'ratios_before': before}
            self.spikes.append(record)
            metrics.update({'loss_spike/loss': loss, 'loss_spike/threshold': v.threshold,
                            'loss_spike/window_mean': v.mean, 'loss_spike/window_std': v.std})
            message = describe(record)
            log.warning(message)
            logger.log_metrics(metrics)
            if self.config.action == 'stop':
                raise LossSpikeError(message + ' (loss_spike_monitor.action=stop; set action: log to keep training)')
            return
        logger.log_metrics(metrics)

    # One JSON string: a sharded checkpoint restores only the keys a fresh monitor's state_dict
    # already has, so the window and the records must not become keys of their own.
    def state_dict(self) -> dict[str, Any]:
        return {'state': json.dumps({'detector': self.detector.state_dict(), 'spikes': self.spikes,
                                     'nonfinite_steps': self.nonfinite_steps, 'skipped': self.skipped,
                                     'config': asdict(self.config)})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sd = json.loads(state['state'])
        self.detector.load_state_dict(sd['detector'])
        self.spikes = list(sd['spikes'])
        self.skipped = int(sd['skipped'])
        self.nonfinite_steps = int(sd['nonfinite_steps'])


def _any_rank(state: State, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: ranks must decide alike or they hang."""
    if dist.get_world_size() == 1:
        return flag
    t = state.device.tensor_to_device(torch.tensor([1.0 if flag else 0.0]))
    dist.all_reduce(t, reduce_operation='MAX')
    return bool(t.item() > 0)


def describe(record: dict[str, Any]) -> str:
    """One line for a spike record: where, how big, and which matrices moved most."""
    text = (f'loss spike at step {record["step"]}: loss {record["loss"]:.4g} > threshold {record["threshold"]:.4g} '
            f'(window mean {record["window_mean"]:.4g}, std {record["window_std"]:.3g}, k={record["k"]:g})')
    for label, key in (('at', 'ratios_at'), ('before', 'ratios_before')):
        m = record.get(key)
        if m:
            tops = ', '.join(f'{n} {r:.3g}' for n, r in m['top'])
            text += f'; largest update ratios {label} step {m["step"]}: {tops}'
    if not math.isfinite(record['loss']):
        text += '; the loss is not finite'
    return text
