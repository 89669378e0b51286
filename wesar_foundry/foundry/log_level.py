"""Our log lines at the level of the run's ``python_log_level``.

llm-foundry's ``train()`` sets the level of the ``llmfoundry`` (and ``streaming``) loggers to the
YAML's ``python_log_level`` (default ``debug``), Composer's Trainer that of ``composer``; nothing
sets ``wesar_foundry``'s, so our INFO lines (the σ choice at build) were dropped by the root
logger's WARNING. ``follow_llmfoundry`` gives ``wesar_foundry`` the level of ``llmfoundry``; it runs
when one of our models is built, which ``train()`` does after setting the levels and before
anything else of ours logs.
"""

from __future__ import annotations

import logging

PACKAGE_LOGGER = 'wesar_foundry'
# The level this module last set (None: never): a level set by anyone else is left alone.
_followed: int | None = None


def follow_llmfoundry() -> None:
    """Set the ``wesar_foundry`` logger's level to the ``llmfoundry`` logger's, unless the user set ours."""
    global _followed
    ours = logging.getLogger(PACKAGE_LOGGER)
    if ours.level not in (logging.NOTSET, _followed):
        return  # set by the user (or their logging config): theirs wins
    _followed = logging.getLogger('llmfoundry').level
    ours.setLevel(_followed)
