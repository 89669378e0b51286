"""Refuse Composer's FSDP1 for the WeSaR-family models (``wesar_llama``, ``wesar_hf``, ``wesar_mpt``).

Composer 0.32's ``Trainer`` turns a plain ``fsdp_config`` dict (what llm-foundry passes) into FSDP1
unless the environment has ``FSDP_VERSION=2``. FSDP1 flattens parameters, which our per-matrix
monitors, Weight Normalization's row norms, σReparam's power iteration and the gated custom ops
were never run on (FSDP1 needs CUDA, so no CPU rehearsal ever took it). The models therefore
refuse it before the first step, unless ``WESAR_ALLOW_FSDP1=1`` says "at my own risk".

When: Composer's ``Trainer`` hands the model its ``Logger`` (``model.logger = ...``, documented on
``ComposerModel``) after it has parsed the parallelism config and before ``Event.INIT`` and the
FSDP wrap; the ``Logger`` holds the trainer's ``State``, whose ``fsdp_config_version`` is
0 (DDP, or world size 1: llm-foundry drops ``fsdp_config`` there), 1 or 2. It is the only moment a
model sees the choice before FSDP1's wrap, which on CPU stops at once on "Found no NVIDIA driver".
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ALLOW_FSDP1_ENV = 'WESAR_ALLOW_FSDP1'


def fsdp1_refusal(model_name: str) -> str:
    """The error for ``model_name`` about to be wrapped by FSDP1: what is wrong and the fix."""
    return (
        f'{model_name}: Composer is about to wrap this model with FSDP1, because the run has an fsdp_config '
        f'and the environment does not set FSDP_VERSION=2. FSDP1 flattens parameters, which WeSaR\'s per-matrix '
        f'monitors, Weight Normalization, sigmaReparam and the gated ops were never tested with. Set '
        f'FSDP_VERSION=2 in the environment of the launch (e.g. FSDP_VERSION=2 composer -n 8 -m '
        f'llmfoundry.cli.cli train <yaml> ...), or in a MosaicML job env_variables: {{FSDP_VERSION: \'2\'}}. '
        f'To try FSDP1 anyway, at your own risk: {ALLOW_FSDP1_ENV}=1.')


def check_fsdp_version(state, model_name: str) -> None:
    """Raise (or, with ``WESAR_ALLOW_FSDP1=1``, warn) if ``state`` (a Composer ``State``) is set up
    for FSDP1; DDP, world size 1 and FSDP2 pass."""
    if state.fsdp_config_version != 1:
        return
    if os.environ.get(ALLOW_FSDP1_ENV) == '1':
        log.warning('%s=1: training %s with FSDP1, which wesar-foundry does not test (FSDP_VERSION=2 is '
                    'the tested path)', ALLOW_FSDP1_ENV, model_name)
        return
    raise ValueError(fsdp1_refusal(model_name))
