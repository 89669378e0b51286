"""Reading a saved Composer checkpoint: the gated model with its weights, the training dtype and the tokenizer.

Only the model weights, the HF config and tokenizer (``state.integrations.huggingface``) and the
precision are read, in one CPU process; never the optimizer, the RNG or the callbacks' state. The
gated config is recovered from the saved config.json content by the family's adapter, and the
gated model built on meta and given the saved tensors as they are (``load_state_dict(assign=True)``),
so no second copy of the weights is made.

**Monolithic** files are ``torch.load``-ed memory-mapped (copy-on-write, the file is never
written): the optimizer's tensors are never read into memory.

**Sharded checkpoints** (FSDP with ``state_dict_type: sharded``) are folders
``{save_folder}/ep{E}-ba{B}/`` of ``torch.distributed.checkpoint`` files: ``.metadata`` (written last,
so a folder without it is an interrupted save) and one ``__{r}_{i}.distcp`` per rank. The metadata
lists every saved value by its dotted key (``state.model.model.<fqn>``, ``state.optimizers...``,
``state.integrations.huggingface...``) with, for a tensor, its full shape and the chunks it was saved
in: chunk c (offsets o_c and lengths n_c per dimension, stored in the file of the rank that owned
it) holds the block W[o_c : o_c + n_c], and the chunks tile W. Consolidation writes every chunk
into its block of a full-size tensor: byte copies, so the result is exact whatever the number of
ranks. It runs in one CPU process with no process group: ``torch.distributed.checkpoint.load`` of
a template holding an empty full-size tensor for every ``state.model.*`` key and a placeholder
for the pickled HF metadata (``state.integrations.huggingface.*``: config and tokenizer files)
and ``state.metadata.precision``. Only those keys are planned. Loading holds the model's fp32
size, plus one saved chunk in flight.

A **save folder** stands for its newest checkpoint (Composer's ``latest-*`` links); a **remote**
checkpoint (s3://, gs://, oci://, ...) is downloaded first (``wesar_foundry.files.remote``: of a
sharded one only its ``.metadata`` and ``.distcp`` objects).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.integrations.accelerate import init_empty_weights

from wesar_foundry.export.adapter import ADAPTERS, Adapter, family_of, load_adapter

# Composer's links to the newest checkpoint in a save folder (rank 0's): sharded, monolithic.
LATEST_SHARDED = 'latest-sharded-rank0'
LATEST_MONOLITHIC = 'latest-rank0.pt'
# What export reads of a sharded checkpoint. Never the optimizer (state.optimizers.*), the RNG or
# the callbacks' state.
SHARDED_KEYS = ('state.model.', 'state.integrations.huggingface.', 'state.metadata.precision')


@dataclass
class GatedCheckpoint:
    """What export needs of a Composer checkpoint."""

    model: PreTrainedModel
    """The gated model, its weights loaded (the checkpoint's own tensors), in eval mode."""
    precision: Any
    """The Composer precision the run trained with (``fp32``, ``amp_bf16``, ...)."""
    tokenizer: Any
    """The tokenizer saved with the model, or None."""


# ----------------------------------------------------------------------------------------------
# Where the checkpoint is
# ----------------------------------------------------------------------------------------------

def sharded_checkpoints(folder: Path) -> list[Path]:
    """The complete sharded checkpoints (folders holding a ``.metadata``) in ``folder``, oldest first."""
    def step(p: Path) -> tuple:
        m = re.fullmatch(r'ep(\d+)-ba(\d+)', p.name)
        return (0, int(m[1]), int(m[2])) if m else (1, 0, 0, p.name)
    return sorted((p for p in folder.iterdir() if p.is_dir() and (p / '.metadata').is_file()), key=step)


def resolve_checkpoint(path: Path) -> Path:
    """The monolithic file or sharded checkpoint folder that ``path`` names.

    A save folder stands for the checkpoint its ``latest-sharded-rank0`` link (else its
    ``latest-rank0.pt`` link) points to. A folder without ``.metadata`` is refused:
    torch.distributed.checkpoint writes it last, after every rank's shard file, so without it the
    save did not finish.
    """
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if not path.is_dir():
        return path
    if (path / '.metadata').is_file():
        return path
    link = path / LATEST_SHARDED
    if link.is_symlink() or link.exists():
        target = link.resolve()
        if not target.is_dir():
            raise ValueError(f'{link} points to {target}, which does not exist (deleted, or the save folder was '
                             f'moved without it); pass one of its checkpoint folders instead'
                             f'{_listing(sharded_checkpoints(path))}')
        if not (target / '.metadata').is_file():
            raise ValueError(_incomplete(target))
        return target
    if (path / LATEST_MONOLITHIC).is_file():
        return (path / LATEST_MONOLITHIC).resolve()
    if any(path.glob('*.distcp')) or (path / '.metadata.tmp').exists():
        raise ValueError(_incomplete(path))
    raise ValueError(
        f'{path} is a directory but neither a sharded Composer checkpoint (no .metadata in it) nor a save folder '
        f'with a {LATEST_SHARDED} or {LATEST_MONOLITHIC} link; export reads a sharded checkpoint folder '
        f'(<save_folder>/ep<E>-ba<B>), a save folder, or a monolithic Composer checkpoint file (.pt)'
        f'{_listing(sharded_checkpoints(path))}')


def _listing(folders: list[Path]) -> str:
    return f' (complete checkpoints here: {", ".join(p.name for p in folders)})' if folders else ''


def _incomplete(folder: Path) -> str:
    return (f'{folder} is an incomplete sharded checkpoint: it has no .metadata, which torch.distributed.checkpoint '
            'writes last, after every rank\'s shard, so the save was interrupted (or is still running); export an '
            f'earlier checkpoint{_listing(sharded_checkpoints(folder.parent))}')


def download_checkpoint(uri: str, work: Path) -> Path:
    """A remote checkpoint (a save folder, a sharded checkpoint folder or a file) → a local copy under ``work``."""
    from wesar_foundry.files.remote import download_file, download_sharded_checkpoint, resolve_remote_checkpoint
    kind, target = resolve_remote_checkpoint(uri, LATEST_SHARDED)
    if kind == 'sharded':
        return download_sharded_checkpoint(target, work / 'checkpoint')
    return download_file(target, work / 'checkpoint.pt')


# ----------------------------------------------------------------------------------------------
# Its state
# ----------------------------------------------------------------------------------------------

def _set_path(root: dict, path: Sequence, value: Any) -> None:
    """``root[p0][p1]... = value``, creating dicts for str keys and lists for int keys on the way."""
    node: Any = root
    for key, child in zip(path[:-1], path[1:]):
        if isinstance(node, list):
            node.extend([None] * (key + 1 - len(node)))
            missing = node[key] is None
        else:
            missing = key not in node
        if missing:
            node[key] = [] if isinstance(child, int) else {}
        node = node[key]
    if isinstance(node, list):
        node.extend([None] * (path[-1] + 1 - len(node)))
    node[path[-1]] = value


def _load_sharded_state(folder: Path) -> dict:
    """The ``state`` of a sharded Composer checkpoint: model weights (consolidated, fp32 as saved) and
    the HF metadata only; the same nesting a monolithic checkpoint has.

    Public API only: ``dcp.load`` of a template built from the metadata, rather than the private
    ``state_dict_loader._load_state_dict_from_keys``, which rebuilds the same template from a key
    filter but is not a stable interface.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(folder)
    try:
        metadata = reader.read_metadata()
    except Exception as e:
        raise ValueError(f'{folder}/.metadata cannot be read as torch.distributed.checkpoint metadata (truncated or '
                         f'corrupt?): {type(e).__name__}: {e}') from e
    wanted = {k: md for k, md in metadata.state_dict_metadata.items() if k.startswith(SHARDED_KEYS)}
    # Flat, with the saved keys: the default planner's flattening leaves them as they are, so exactly
    # these keys are planned. Pickled values (config, tokenizer files) replace their placeholder.
    template = {k: torch.empty(md.size, dtype=md.properties.dtype) if isinstance(md, TensorStorageMetadata) else None
                for k, md in wanted.items()}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*assuming the intent is to load in a single process')
            dcp.load(template, storage_reader=reader)
    except (Exception, CheckpointException) as e:  # the latter is a BaseException
        raise ValueError(f'{folder}: the model weights cannot be read (missing, truncated or corrupt .distcp file?): '
                         f'{type(e).__name__}: {e}') from e
    # Rebuild the nesting with the saver's own key paths (a key such as
    # ...tokenizer.tokenizer.json.content... holds dots that are not levels).
    paths = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    root: dict = {}
    for key in list(template):
        _set_path(root, paths.get(key) or key.split('.'), template.pop(key))
    state = root.get('state', {})
    # torch.distributed.checkpoint saves no empty dict: a model saved without a tokenizer has none.
    state.get('integrations', {}).get('huggingface', {}).setdefault('tokenizer', {})
    return state


def _load_monolithic_state(path: Path) -> dict | None:
    """The ``state`` of a monolithic Composer checkpoint file (None if it holds none)."""
    try:
        # weights_only=False: checkpoints hold Composer objects (trusted files only). mmap: tensors
        # stay in the file until touched, so the optimizer's are never read into memory.
        ckpt = torch.load(path, map_location='cpu', weights_only=False, mmap=True)
    except Exception as e:  # truncated zip, not a pickle, ...
        raise ValueError(f'{path} cannot be read as a Composer checkpoint (truncated or corrupt?): '
                         f'{type(e).__name__}: {e}') from e
    return ckpt.get('state') if isinstance(ckpt, dict) else None


def load_composer_state(path: Path) -> dict:
    """The ``state`` of a Composer checkpoint (a monolithic file or a sharded folder), or a ValueError
    saying what is wrong."""
    state = _load_sharded_state(path) if path.is_dir() else _load_monolithic_state(path)
    if not isinstance(state, dict) or not isinstance(state.get('model'), dict) or not state['model']:
        raise ValueError(f'{path} is not a Composer checkpoint: no state.model in it')
    hf = (state.get('integrations') or {}).get('huggingface')
    if not isinstance(hf, dict) or 'model' not in hf:
        raise ValueError(f'{path} is not a checkpoint of a Composer HuggingFaceModel: no state.integrations.huggingface '
                         'metadata, so the model config cannot be recovered')
    return state


# ----------------------------------------------------------------------------------------------
# The gated model
# ----------------------------------------------------------------------------------------------

def gated_config(state: dict, path: Path) -> tuple[PretrainedConfig, Adapter]:
    """The gated config saved in ``state`` and its family's adapter, or a ValueError naming the families."""
    content = dict(state['integrations']['huggingface']['model']['config']['content'])
    family = family_of(content)
    if family not in ADAPTERS:
        raise ValueError(f'{path} is not a wesar-foundry checkpoint: its model_type is {content.get("model_type")!r}, '
                         f'expected one of {", ".join(k for k in ADAPTERS if k != "wesar_hf")} (or a stock model_type '
                         f'with a wesar_hf entry)')
    adapter = load_adapter(family)
    return adapter.gated_config(content), adapter


def load_gated_model(config: PretrainedConfig, adapter: Adapter, model_state: dict[str, Any],
                     path: Path) -> PreTrainedModel:
    """The gated model of ``config`` holding the checkpoint's own tensors (built on meta, then assigned)."""
    # Composer stores the HF model under the wrapper's attribute `model`.
    prefix = 'model.'
    weights = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    with init_empty_weights():  # parameters on meta: no second copy of the weights in memory
        model = adapter.build(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f'{path}: the model weights do not match its {config.model_type} config (truncated or '
                         f'edited checkpoint?): missing {missing[:5]}{"..." if len(missing) > 5 else ""}, '
                         f'unexpected {unexpected[:5]}{"..." if len(unexpected) > 5 else ""}')
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor) or value.is_meta:
            raise ValueError(f'{path}: model weight {key} holds no data')
    model.load_state_dict(weights, assign=True)
    return model.eval()


def read_checkpoint(path: Path, work: Path, shown: str | None = None) -> GatedCheckpoint:
    """The gated model, precision and tokenizer of the local checkpoint ``path`` (resolved, see
    ``resolve_checkpoint``); ``work``: a scratch folder for the tokenizer files. ``shown``: the name
    errors give the checkpoint (a remote URI instead of its downloaded copy)."""
    try:
        state = load_composer_state(path)
        config, adapter = gated_config(state, path)
    except ValueError as e:
        if shown is None:
            raise
        raise ValueError(str(e).replace(str(path), shown)) from None
    # Popped: once loaded into the model, the weights must have no other holder for the merge to
    # free them.
    model = load_gated_model(config, adapter, state.pop('model'), path)
    from composer.models import HuggingFaceModel
    tokenizer = HuggingFaceModel.load_huggingface_tokenizer_from_saved_state(
        state['integrations']['huggingface'], tokenizer_save_dir=str(work / 'tokenizer'))
    precision = (state.get('metadata') or {}).get('precision', 'fp32')
    return GatedCheckpoint(model=model, precision=precision, tokenizer=tokenizer)
