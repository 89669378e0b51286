"""The loss-spike rule (core: pure Python), shared by the online callback and offline plots.

**Rule.** Step t is *flagged* when, after ``warmup`` steps and with ``window`` earlier losses in
the trailing window,

    loss_t > mean + k · std   and   loss_t − mean > min_rise · |mean|

(mean and population std of the window). Flagged losses do not enter the window, so a spike
lasting several steps is measured against the regime before it. A *spike* is a run of
consecutive flagged steps; the count increments on its first step. If a run of flagged steps
reaches ``window`` steps, the loss has settled at a new level: the window is refilled with those
losses and the spike ends.

**Non-finite losses** are flagged at every step, during warm-up and while the window is still
filling too, and counted both as spikes (a run of them is one spike) and on their own
(``nonfinite``): a run that diverges early must not pass for a clean one. They never enter the
window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SpikeRule:
    """The rule's parameters (also the first keys of ``loss_spike_monitor``)."""

    window: int = 50
    """Number of trailing (unflagged) losses the mean and std are taken over."""
    k: float = 5.0
    """A step is flagged when its loss exceeds the window mean by more than k window stds."""
    warmup: int = 50
    """Steps at the start that are never flagged (the early loss falls too fast to compare)."""
    min_rise: float = 0.02
    """Also required: loss − mean > min_rise · |mean| (ignores tiny wiggles on a very flat loss)."""

    def check(self, key: str = 'loss_spike_monitor') -> None:
        """Raise a ValueError naming the key when a value is out of range."""
        for name in ('window', 'warmup'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == 'window' else 0):
                raise ValueError(f'{key}.{name}={v!r} must be an integer >= {2 if name == "window" else 0}')
        for name in ('k', 'min_rise'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
                raise ValueError(f'{key}.{name}={v!r} must be a finite number >= 0')


@dataclass
class Verdict:
    """What the detector says about one step."""

    flagged: bool
    """The loss is above the threshold."""
    new_spike: bool
    """This step starts a spike (the first flagged step of a run)."""
    mean: float
    """Window mean (nan until the window is full)."""
    std: float
    """Window population std (nan until the window is full)."""
    threshold: float
    """max(mean + k·std, mean + min_rise·|mean|) (nan until the window is full)."""


@dataclass
class SpikeDetector:
    """Online detector: feed one loss per step with ``update``. Its state is plain data."""

    rule: SpikeRule = field(default_factory=SpikeRule)
    steps: int = 0
    count: int = 0
    nonfinite: int = 0
    history: deque = field(default_factory=deque)
    run: list = field(default_factory=list)

    def update(self, loss: float) -> Verdict:
        self.steps += 1
        r = self.rule
        nan = math.nan
        if not math.isfinite(loss):
            self.nonfinite += 1
            new = not self.run
            self.count += new
            self.run.append(loss)
            return Verdict(True, new, nan, nan, nan)
        if len(self.history) < r.window or self.steps <= r.warmup:
            self.run = []
            self._push(loss)
            return Verdict(False, False, nan, nan, nan)
        n = len(self.history)
        mean = sum(self.history) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / n)
        threshold = max(mean + r.k * std, mean + r.min_rise * abs(mean))
        flagged = loss > threshold
        new = flagged and not self.run
        if flagged:
            self.count += new
            self.run.append(loss)
            if len(self.run) >= r.window and all(math.isfinite(x) for x in self.run):
                # A new level, not a spike: compare what follows with it.
                self.history = deque(self.run[-r.window:], maxlen=r.window)
                self.run = []
        else:
            self.run = []
            self._push(loss)
        return Verdict(flagged, new, mean, std, threshold)

    def _push(self, loss: float) -> None:
        if self.history.maxlen != self.rule.window:
            self.history = deque(self.history, maxlen=self.rule.window)
        self.history.append(loss)

    def state_dict(self) -> dict[str, Any]:
        return {'steps': self.steps, 'count': self.count, 'nonfinite': self.nonfinite, 'history': list(self.history),
                'run': list(self.run)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.steps, self.count, self.run = int(sd['steps']), int(sd['count']), list(sd['run'])
        self.nonfinite = int(sd['nonfinite'])
        self.history = deque(sd['history'], maxlen=self.rule.window)


def detect_spikes(losses: Iterable[float], rule: SpikeRule | None = None) -> list[int]:
    """Indices (0-based) of the steps that start a spike, by the same rule as the callback."""
    det = SpikeDetector(rule or SpikeRule())
    return [i for i, x in enumerate(losses) if det.update(float(x)).new_spike]
