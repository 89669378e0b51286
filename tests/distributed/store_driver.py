"""``driver.py`` plus one test-only callback for runs that save to an object store:

- ``test_preempt_after_upload``: ``test_preempt`` (SIGKILL the whole job at the start of ``step``,
  once) but only after the save folder's ``latest-sharded-rank0.symlink`` object names the newest
  checkpoint. Composer uploads that link from ``batch_end`` once it has seen every shard on the
  store, polling every 30 s (``CheckpointSaver._symlink_upload_wait_before_next_try_in_seconds``);
  the callback shortens the poll to 0.1 s and, at the kill step, drives the saver's ``batch_end``
  until the link is up, so the kill lands after the checkpoint is resumable, deterministically.

Composer's uploaders are ``spawn`` process pools, whose workers import this file as their main
module: llm-foundry and the driver are imported only under ``__main__``, so each worker loads no
more than Composer (seconds less per worker, of which a run starts several per rank).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from composer.callbacks import CheckpointSaver  # noqa: E402
from composer.core import Callback, State  # noqa: E402
from composer.loggers import Logger  # noqa: E402
from composer.utils import dist  # noqa: E402

from wesar_foundry.files.remote import Store, split_uri  # noqa: E402

POLL_SECONDS = 0.1
TIMEOUT_SECONDS = 120


class PreemptAfterUpload(Callback):
    def __init__(self, step: int, marker: str, link: str, checkpoint: str) -> None:
        self.step, self.marker = int(step), Path(marker)
        self.link, self.checkpoint = link, checkpoint
        """The link's URI, and the checkpoint key it must name before the kill."""

    def fit_start(self, state: State, logger: Logger) -> None:
        for saver in self._savers(state):
            saver._symlink_upload_wait_before_next_try_in_seconds = POLL_SECONDS

    @staticmethod
    def _savers(state: State) -> list[CheckpointSaver]:
        return [cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)]

    def batch_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) + 1 == self.step and dist.get_global_rank() == 0 and not self.marker.exists():
            store, key = Store(self.link), split_uri(self.link)[1]
            deadline = time.monotonic() + TIMEOUT_SECONDS
            while not (store.exists(key) and store.read_text(key).strip() == self.checkpoint):
                if time.monotonic() > deadline:
                    raise RuntimeError(f'{self.link} did not name {self.checkpoint} within {TIMEOUT_SECONDS} s')
                for saver in self._savers(state):
                    saver.batch_end(state, logger)  # where Composer uploads the link
                time.sleep(POLL_SECONDS)
            self.marker.write_text(str(self.step))
            os.killpg(os.getpgrp(), signal.SIGKILL)


if __name__ == '__main__':
    from llmfoundry.registry import callbacks

    from tests.distributed.driver import main  # registers the driver's callbacks
    callbacks.register('test_preempt_after_upload', func=PreemptAfterUpload)
    main(sys.argv[1])
