"""``wesar_data_check``: a run pointed at a prepared folder without the split it reads fails
before any compute, naming the split and the ``prepare`` option that makes it.

llm-foundry builds callbacks before any dataloader (and the model after them), and hands a
``callbacks_with_config`` callback the resolved config: the check runs there, where streaming
would otherwise fail later with a bare missing-``index.json`` error.

    callbacks:
      wesar_data_check: {}
"""

from __future__ import annotations

from typing import Any

from llmfoundry.interfaces import CallbackWithConfig

from wesar_foundry.data.mds import check_loader_splits


class PreparedDataCheck(CallbackWithConfig):
    """Checks every local ``text`` loader split of the run at construction; does nothing after."""

    # No options: as for a stock callback, Python refuses any key under it by name (TypeError).
    def __init__(self, train_config: dict[str, Any]) -> None:
        check_loader_splits(train_config)
