"""Composer checkpoints written the way Composer writes them, for the export tests of every family;
learnable multipliers moved far from their init, for the merge to carry."""

from __future__ import annotations

from pathlib import Path

import torch
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


def spread_multipliers(model, seed: int = 0) -> int:
    """Move every multiplier vector of ``model`` (r, c) to random values in [0.3, 1.7] and every α by
    a random factor in [0.7, 1.3], as a long run might leave them; return how many vectors moved."""
    g = torch.Generator().manual_seed(seed)
    moved = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('.row_mult', '.col_mult')):
                p.copy_(0.3 + 1.4 * torch.rand(p.shape, generator=g))
                moved += 1
            elif name.endswith('.alpha'):
                p.mul_(0.7 + 0.6 * torch.rand(p.shape, generator=g))
    return moved


def trained_with_spread_multipliers(composer_model, seeds):
    """The HF model of a ``reparam: multipliers`` Composer model after ``spread_multipliers`` and one
    Adam step per batch seed (``adam_steps``), in eval mode: what an export must reproduce."""
    from tests.helpers import adam_steps
    spread_multipliers(composer_model.model)
    adam_steps(composer_model, seeds)
    return composer_model.model.eval()
