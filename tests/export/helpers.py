"""Composer checkpoints written the way Composer writes them, for the export tests of every family."""

from __future__ import annotations

from pathlib import Path

import torch.distributed.checkpoint as dcp


def save_composer_checkpoint(composer_model, path: Path) -> Path:
    """A real monolithic Composer checkpoint of ``composer_model`` (no training needed to save one)."""
    from composer import Trainer
    trainer = Trainer(model=composer_model, device='cpu', precision='fp32', progress_bar=False)
    trainer.save_checkpoint(str(path))
    trainer.close()
    return path


def save_sharded(trainer, folder: Path) -> Path:
    """What Composer's sharded save writes for ``trainer`` (one rank: one ``__0_0.distcp``).

    As ``composer/utils/checkpoint.py::_save_checkpoint`` under FSDP: ``{'state': State.state_dict(),
    'rng': ...}`` through ``torch.distributed.checkpoint.save`` with
    ``DefaultSavePlanner(dedup_save_to_lowest_rank=True)``, so the keys are Composer's own
    (``state.model.model.<fqn>``, ``state.optimizers.Adam.state...``, ``state.integrations.huggingface...``).
    """
    from composer.utils import reproducibility
    state_dict = {'state': trainer.state.state_dict(), 'rng': reproducibility.get_rng_state()}
    dcp.save(state_dict, storage_writer=dcp.FileSystemWriter(folder),
             planner=dcp.DefaultSavePlanner(dedup_save_to_lowest_rank=True))
    return folder
