"""Registers the test-only callbacks before any test of this folder runs ``train()``."""

import tests.foundry.callbacks.helpers  # noqa: F401
