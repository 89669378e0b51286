"""Merge a ``wesar_llama`` model into a stock Hugging Face ``LlamaForCausalLM`` (``model_type: llama``),
and a ``wesar_hf`` model into the stock class of its own ``model_type``.

After training, every reparameterization is folded into its matrix, so the checkpoint has the base
architecture and any inference library loads it:

- WeSaR: each gate folds into its matrix, W ← α·W (the embedding gate included);
- the plain embedding's "Spike No More" output scale folds into the embedding table;
- Weight Normalization and σReparam fold their current W̄ (σReparam with its *stored* singular
  vectors, exactly what the model's eval-mode forward uses);
- Residual Scaling folds its constant 1/√(2N) into W_o and W_d.

Every merge is computed in fp32 from the fp32 masters (``ReparamMatrix.merged_weight``) and the
result is cast once to the requested dtype.

**The paper's GeLU MLP in Llama's gated MLP.** Stock Llama computes
``down(act(gate_proj x) ⊙ up_proj x)``. The paper's two-matrix MLP ``down(GeLU(up x))`` is expressed
exactly with ``hidden_act: gelu`` (transformers' exact erf GeLU), ``mlp_bias: true``, our up
projection as Llama's ``gate_proj`` (bias 0), Llama's ``up_proj`` with weight 0 and bias 1 (so it
outputs the constant 1), and ``down_proj`` with bias 0. ``attention_bias`` stays false.

Inference cost of that form: the zero ``up_proj`` is a third (4d × d) matrix that stock Llama still
multiplies, plus three bias vectors. Per layer that is 16d² weights instead of 12d² (MLP 12d²
instead of 8d²): about +33% non-embedding weights, memory and matmul FLOPs per token (+50% in the
MLP), for outputs identical to the two-matrix model's. SwiGLU models (``mlp_type: swiglu``) map one
to one onto Llama's MLP and export at no extra cost.

**wesar_hf models** (any family of ``wesar_foundry.roles``) merge into transformers' own class
for their config (``GPTNeoXForCausalLM``, ``Phi3ForCausalLM``, ...): the model was trained in
that architecture, so no rewriting is needed. Each matrix becomes W̄ = s ⊙ W (a fused qkv or
gate_up matrix has one gain, so its row layout does not matter), each bias is copied as it is (the
gain scales W, not W x + b), and the norms and everything else are copied. The config is the
training config without its ``wesar_hf`` entry. Tied embeddings are refused when the model is
built, so there is never a tied wesar_hf model to merge.

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
and ``state.metadata.precision``. Only those keys are planned, so the optimizer state (twice the
model for Adam), the RNG and the callbacks' state are never read.

**Memory.** Let S be the model's fp32 size. Loading holds S (plus one saved chunk in flight). The
merge then consumes the model one matrix at a time (``release``): W̄ = s ⊙ W is written over W
(the same fp32 product, so no second matrix), cast once, and the module freed before the next one,
so sources plus results stay within S, plus, for the GeLU MLP, the zero ``up_proj`` weights
(4d² per layer: up to a third of the decoder's weights). A monolithic file is memory-mapped
(copy-on-write, the file is never written): the optimizer's tensors are never read, and the merge
turns the model's mapped pages into the results' in place. The merged tensors go to
``save_pretrained`` as its ``state_dict`` and are held by nothing else; it writes
``max_shard_size`` shards and drops each shard's tensors once written (the pinned safetensors 0.8
writes straight from the tensors' memory; older versions copied each shard to bytes first, which
the shard size bounds). ``bench/export_memory.py`` measures it.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig
from transformers.integrations.accelerate import init_empty_weights

from wesar_foundry.atomic import staged_dir
from wesar_foundry.model.config import WeSaRLlamaConfig
from wesar_foundry.model.hf import (
    CONFIG_KEY, build_gated_model, from_checkpoint_config, is_gated_hf, stock_class, stock_config,
)
from wesar_foundry.model.modeling import WeSaRLlamaForCausalLM
from wesar_foundry.remote import is_uri
from wesar_foundry.reparam import ReparamMatrix

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
# llm-foundry's HuggingFaceCheckpointer spells them out; accept both.
DTYPE_ALIASES = {'float32': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16'}
# Composer's Precision values → the dtype the model computed in: the default export dtype.
TRAINING_DTYPES = {'fp32': 'fp32', 'amp_bf16': 'bf16', 'amp_fp16': 'fp16', 'amp_fp8': 'bf16'}
# What llm-foundry's hf_checkpointer writes too; bounds the files (and, with old safetensors, the
# copy serialization made of each shard).
MAX_SHARD_SIZE = '1GB'

# WeSaRLlamaConfig's own keys, which a stock LlamaConfig must not carry.
_WESAR_CONFIG_KEYS = ('mlp_type', 'reparam', 'init_target', 'sigma2', 'sigma_choice', 'sigma_reparam_gamma_init')
_DROP_CONFIG_KEYS = _WESAR_CONFIG_KEYS + (
    'model_type', 'architectures', 'transformers_version', '_name_or_path', 'torch_dtype',
    '_attn_implementation_autoset', 'auto_map',
)


def parse_dtype(name: str | torch.dtype, key: str = '--dtype') -> torch.dtype:
    """``fp32``/``bf16``/``fp16`` (or ``float32``/``bfloat16``/``float16``, or a torch dtype)."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    short = DTYPE_ALIASES.get(name, name) if isinstance(name, str) else None
    if short not in DTYPES:
        raise ValueError(f'{key}={name!r} is not an export dtype; allowed: {", ".join(DTYPES)} '
                         f'(or {", ".join(DTYPE_ALIASES)})')
    return DTYPES[short]


def parse_shard_size(size: int | str, key: str = '--max-shard-size') -> int:
    """Bytes of a ``save_pretrained`` shard size: an int, or a number with KB/MB/GB/TB (powers of 1000, as
    Hugging Face counts them), e.g. ``500MB``."""
    value = size
    if isinstance(size, str):
        m = re.fullmatch(r'\s*(\d+(?:\.\d*)?)\s*([KMGT]B)?\s*', size, re.IGNORECASE)
        unit = 1000 ** ('KMGT'.index(m[2][0].upper()) + 1) if m and m[2] else 1
        value = int(float(m[1]) * unit) if m else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'{key}={size!r} is not a file size; use a number of bytes or e.g. 500MB, 5GB')
    return value


def training_dtype(precision: Any) -> torch.dtype:
    """The dtype a Composer ``precision`` (``fp32``, ``amp_bf16``, ...) computes in."""
    value = getattr(precision, 'value', precision)
    return DTYPES[TRAINING_DTYPES.get(value, 'fp32')]


# ----------------------------------------------------------------------------------------------
# The merge (in memory)
# ----------------------------------------------------------------------------------------------

def _describe_gain(module: ReparamMatrix) -> str:
    gain = module.gain().detach().float()
    return f'{gain.item():.6g}' if gain.numel() == 1 else f'per-row gains (mean {gain.mean().item():.6g})'


@torch.no_grad()
def check_tied_gains(model: WeSaRLlamaForCausalLM) -> None:
    """Refuse a tied-embedding model whose embedding and LM head use different effective weights.

    A stock tied Llama uses one matrix for both; ours may scale the shared matrix differently in
    each place (e.g. the plain embedding's output scale 1/σ_e against the head's 1), and no single
    matrix reproduces both.
    """
    if not model.config.tie_word_embeddings:
        return
    emb, head = model.model.embed_tokens, model.lm_head
    # Gains, not merged weights: this also runs at the start of training, where FSDP may have
    # sharded the weights (a tied model is gate-less, so its gains are plain constants).
    g_emb, g_head = emb.gain().detach().float(), head.gain().detach().float()
    same = g_emb.shape == g_head.shape and torch.equal(g_emb, g_head)
    if same and emb.weight is not head.weight:  # loaded from a checkpoint: two copies
        same = torch.equal(emb.weight, head.weight)
    if same:
        return
    raise ValueError(
        'cannot export a model with tie_word_embeddings=True whose embedding and LM head gains differ '
        f'(embedding gain {_describe_gain(emb)}, LM head gain {_describe_gain(head)}): the two share one '
        'stored matrix but use it scaled differently, while a stock tied Llama uses one matrix for both, '
        'so no tied checkpoint computes the same function. Train with tie_word_embeddings: false to '
        'export this kind of model.')


def llama_config(config: WeSaRLlamaConfig, dtype: torch.dtype = torch.float32, tokenizer=None) -> LlamaConfig:
    """The stock ``LlamaConfig`` of the merged model (GeLU MLP in the gated form, see module doc).

    The tokenizer's bos/eos/pad ids replace Llama's defaults (1/2/none), so ``generate`` stops at
    the tokenizer's EOS and evaluation harnesses pad correctly.
    """
    if config.model_type != WeSaRLlamaConfig.model_type:
        raise ValueError(f'model_type={config.model_type!r} is not a {WeSaRLlamaConfig.model_type} config')
    fields = {k: v for k, v in config.to_diff_dict().items() if k not in _DROP_CONFIG_KEYS}
    gelu = config.mlp_type == 'gelu'
    fields.update(
        hidden_act='gelu' if gelu else 'silu',
        mlp_bias=gelu,  # the constant-1 up_proj needs its bias; the zero biases are exact no-ops
        attention_bias=False,
        architectures=['LlamaForCausalLM'],
        torch_dtype=dtype,
    )
    if tokenizer is not None:
        for name in ('bos_token_id', 'eos_token_id', 'pad_token_id'):
            if getattr(tokenizer, name, None) is not None:
                fields[name] = getattr(tokenizer, name)
    return LlamaConfig(**fields)


def _release(module: ReparamMatrix) -> None:
    # New meta tensors replace the module's own: its storage is freed unless something else holds it
    # (a tied head keeps the shared matrix alive; export skips it, see export_model).
    module.to('meta')


@torch.no_grad()
def merged_tensors(model: WeSaRLlamaForCausalLM, dtype: torch.dtype = torch.float32, *, release: bool = False,
                   skip: Sequence[str] = ()) -> Iterator[tuple[str, torch.Tensor]]:
    """The stock Llama state dict of ``model`` as ``(key, tensor)`` pairs in ``dtype``, one module at a time.

    Every W̄ is merged in fp32 from the fp32 masters and cast once to ``dtype``; the GeLU MLP is
    written in gated form (module doc). With ``release`` the model is consumed: each fp32 matrix is
    merged in its own storage and its module then freed (moved to meta), so a caller that keeps the
    results holds no more than the model (plus the GeLU form's zero weights and, for another
    dtype, one cast matrix in flight); ``model`` is unusable afterwards. ``skip``: matrices
    (qualified names, e.g. ``lm_head``) to leave out. σReparam uses the stored singular vectors:
    this runs under no_grad, so no power-iteration step is taken.
    """
    check_tied_gains(model)
    gelu = getattr(model.config, 'mlp_type', None) == 'gelu'  # wesar_llama only
    reparams = model.reparam_modules()
    owned = {f'{name}.{k}' for name, m in reparams.items() for k in m.state_dict()}
    # Everything that is not a reparameterized matrix (the RMSNorm gains) is copied as it is.
    rest = {k: v for k, v in model.state_dict().items() if k not in owned}
    # A matrix stored once for two modules (a tied embedding and head) is not overwritten.
    holders = Counter(m.weight.data_ptr() for name, m in reparams.items() if name not in skip)
    for name, module in reparams.items():
        if name in skip:
            continue
        if release and module.weight.dtype == torch.float32 and holders[module.weight.data_ptr()] == 1:
            # W̄ = s ⊙ W written over W (the gain first: it may depend on W): merged_weight's own
            # fp32 product, without a second matrix in memory.
            w = module.weight.detach().mul_(module.gain().float())
        else:
            w = module.merged_weight()
        w = w.to(dtype)  # the single cast (a no-op for fp32)
        bias = getattr(module, 'bias', None)  # wesar_hf's biased layers: copied as they are
        bias = None if bias is None else bias.detach().to(dtype, copy=True)
        if release:
            _release(module)
        if bias is not None:
            yield name + '.bias', bias
        if gelu and name.endswith('.mlp.up_proj'):
            # Our up projection becomes Llama's gate_proj (the one the activation is applied to);
            # Llama's up_proj becomes the constant 1: zero weight, bias 1.
            prefix = name[: -len('up_proj')]
            yield prefix + 'gate_proj.weight', w
            yield prefix + 'gate_proj.bias', w.new_zeros(w.shape[0])
            yield prefix + 'up_proj.weight', torch.zeros_like(w)
            yield prefix + 'up_proj.bias', w.new_ones(w.shape[0])
        elif gelu and name.endswith('.mlp.down_proj'):
            yield name + '.weight', w
            yield name + '.bias', w.new_zeros(w.shape[0])
        else:
            yield name + '.weight', w
    for key, value in rest.items():
        yield key, value.detach().to(dtype, copy=True)


@torch.no_grad()
def merged_state_dict(model: WeSaRLlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The stock Llama state dict of ``model``, in fp32: every W̄ merged, GeLU MLP in gated form.

    Call it on a model whose weights are loaded (not on meta). σReparam uses the stored singular
    vectors: ``merged_weight`` runs under no_grad, so no power-iteration step is taken.
    """
    return dict(merged_tensors(model, torch.float32))


def _check_wesar(model: Any) -> None:
    if not isinstance(model, WeSaRLlamaForCausalLM) and not is_gated_hf(model):
        raise ValueError(f'expected a WeSaRLlamaForCausalLM or a wesar_hf model, got {type(model).__name__}')


def stock_target(model: Any, dtype: torch.dtype = torch.float32, tokenizer=None) -> tuple[PretrainedConfig, type]:
    """The stock config and class ``model`` merges into: Llama for wesar_llama, its own class for wesar_hf."""
    _check_wesar(model)
    if is_gated_hf(model):
        return stock_config(model.config, dtype, tokenizer), stock_class(model.config)
    return llama_config(model.config, dtype, tokenizer), LlamaForCausalLM


def _empty_llama(config: PretrainedConfig, cls: type = LlamaForCausalLM):
    with init_empty_weights():  # parameters on meta: the merged tensors are assigned or saved as they are
        return cls(config)


def _check_keys(llama, state: dict[str, torch.Tensor], skip: Sequence[str] = ()) -> None:
    expected = {k for k in llama.state_dict() if k.rsplit('.', 1)[0] not in skip}
    if set(state) != expected:
        raise RuntimeError(f'merged state dict does not match {type(llama).__name__}: missing '
                           f'{sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}')


@torch.no_grad()
def to_llama(model: WeSaRLlamaForCausalLM, dtype: torch.dtype = torch.float32, tokenizer=None) -> LlamaForCausalLM:
    """A stock ``LlamaForCausalLM`` in ``dtype`` computing what ``model`` computes in eval mode
    (for a wesar_hf model: the stock model of its own class, see ``to_stock``)."""
    return to_stock(model, dtype, tokenizer)


@torch.no_grad()
def to_stock(model: Any, dtype: torch.dtype = torch.float32, tokenizer=None):
    """The stock transformers model (``stock_target``) in ``dtype`` computing what ``model`` computes in eval mode."""
    dtype = parse_dtype(dtype)
    config, cls = stock_target(model, dtype, tokenizer)
    llama = _empty_llama(config, cls)
    # Cast tensor by tensor: no fp32 copy of the whole merged model.
    state = dict(merged_tensors(model, dtype))
    _check_keys(llama, state)
    llama.load_state_dict(state, assign=True)
    if config.tie_word_embeddings:
        llama.tie_weights()
    return llama.eval()


# ----------------------------------------------------------------------------------------------
# Writing a directory (write to a temporary sibling, rename at the end)
# ----------------------------------------------------------------------------------------------

def check_output_dir(out_dir: str | os.PathLike, force: bool = False, protect: tuple = ()) -> Path:
    """Refuse an existing ``out_dir`` unless ``force``; never one that is or holds a ``protect`` path."""
    out = Path(out_dir).expanduser().absolute()
    for p in protect:
        src = Path(p).expanduser().absolute()
        if out == src or out in src.parents:
            raise ValueError(f'output directory {out} is or contains the source checkpoint {src}; choose another')
    if out.exists() and not force:
        raise FileExistsError(f'output directory {out} already exists; pass --force (force=True) to replace it')
    return out


def save_llama(llama: LlamaForCausalLM, out_dir: str | os.PathLike, tokenizer=None, force: bool = False,
               protect: tuple = (), state_dict: dict[str, torch.Tensor] | None = None,
               max_shard_size: int | str = MAX_SHARD_SIZE) -> Path:
    """Write ``llama`` (+ tokenizer) to ``out_dir`` via a temporary sibling renamed at the end.

    ``state_dict``: the weights to write instead of ``llama``'s own (``llama`` may then be on
    meta); ``save_pretrained`` empties it shard by shard. Nothing appears at ``out_dir`` unless the
    whole checkpoint was written; with ``force`` an existing ``out_dir`` is replaced only then.
    """
    out = check_output_dir(out_dir, force, protect)
    with staged_dir(out) as staging:
        llama.save_pretrained(staging, state_dict=state_dict, safe_serialization=True, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        check_output_dir(out, force, protect)  # created meanwhile by someone else?
    return out


def export_model(model: WeSaRLlamaForCausalLM, out_dir: str | os.PathLike, tokenizer=None,
                 dtype: str | torch.dtype = 'fp32', force: bool = False, protect: tuple = (), *,
                 release: bool = False, max_shard_size: int | str = MAX_SHARD_SIZE) -> Path:
    """Merge ``model`` and write a stock Llama checkpoint (+ tokenizer) to ``out_dir`` (a wesar_hf
    model: a stock checkpoint of its own model_type).

    The merged tensors are handed to ``save_pretrained`` directly, with no Llama module holding
    them. ``release``: free each of ``model``'s matrices once merged (``model`` is unusable
    afterwards), so that the export needs about the model's size, not twice it (module doc).
    """
    dtype = parse_dtype(dtype)
    max_shard_size = parse_shard_size(max_shard_size)
    check_output_dir(out_dir, force, protect)  # fail before any work
    config, cls = stock_target(model, dtype, tokenizer)
    # save_pretrained records the dtype of the model's parameters in config.json: meta, in `dtype`.
    llama = _empty_llama(config, cls).to(dtype)
    # A tied Llama stores one matrix, the embedding (check_tied_gains: the head's W̄ equals it).
    skip = ('lm_head',) if config.tie_word_embeddings else ()
    state = dict(merged_tensors(model, dtype, release=release, skip=skip))
    _check_keys(llama, state, skip)
    return save_llama(llama, out_dir, tokenizer, force, protect, state_dict=state, max_shard_size=max_shard_size)


# ----------------------------------------------------------------------------------------------
# From a saved Composer checkpoint (no training data needed)
# ----------------------------------------------------------------------------------------------

# Composer's links to the newest checkpoint in a save folder (rank 0's): sharded, monolithic.
LATEST_SHARDED = 'latest-sharded-rank0'
LATEST_MONOLITHIC = 'latest-rank0.pt'
# What export reads of a sharded checkpoint. Never the optimizer (state.optimizers.*), the RNG or
# the callbacks' state.
SHARDED_KEYS = ('state.model.', 'state.integrations.huggingface.', 'state.metadata.precision')


def _sharded_checkpoints(folder: Path) -> list[Path]:
    """The complete sharded checkpoints (folders holding a ``.metadata``) in ``folder``, oldest first."""
    def step(p: Path) -> tuple:
        m = re.fullmatch(r'ep(\d+)-ba(\d+)', p.name)
        return (0, int(m[1]), int(m[2])) if m else (1, 0, 0, p.name)
    return sorted((p for p in folder.iterdir() if p.is_dir() and (p / '.metadata').is_file()), key=step)


def _resolve_checkpoint(path: Path) -> Path:
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
                             f'{_listing(_sharded_checkpoints(path))}')
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
        f'{_listing(_sharded_checkpoints(path))}')


def _listing(folders: list[Path]) -> str:
    return f' (complete checkpoints here: {", ".join(p.name for p in folders)})' if folders else ''


def _incomplete(folder: Path) -> str:
    return (f'{folder} is an incomplete sharded checkpoint: it has no .metadata, which torch.distributed.checkpoint '
            'writes last, after every rank\'s shard, so the save was interrupted (or is still running); export an '
            f'earlier checkpoint{_listing(_sharded_checkpoints(folder.parent))}')


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


def _load_composer_state(path: Path) -> dict:
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


def _wesar_config(state: dict, path: Path) -> PretrainedConfig:
    content = dict(state['integrations']['huggingface']['model']['config']['content'])
    model_type = content.get('model_type')
    if CONFIG_KEY in content:  # a wesar_hf model: the stock model_type plus its options
        return from_checkpoint_config(content)
    if model_type != WeSaRLlamaConfig.model_type:
        raise ValueError(f'{path} is not a wesar-foundry checkpoint: its model_type is {model_type!r}, '
                         f'expected {WeSaRLlamaConfig.model_type!r} (or a wesar_hf config)')
    return WeSaRLlamaConfig.from_dict(content)


def _load_weights(config: PretrainedConfig, model_state: dict[str, Any], path: Path):
    # Composer stores the HF model under the wrapper's attribute `model`.
    prefix = 'model.'
    weights = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    with init_empty_weights():  # parameters on meta: no second copy of the weights in memory
        model = build_gated_model(config) if hasattr(config, CONFIG_KEY) else WeSaRLlamaForCausalLM(config)
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


def _download_checkpoint(uri: str, work: Path) -> Path:
    """A remote checkpoint (see :func:`export_checkpoint`) → a local copy under ``work``."""
    from wesar_foundry.remote import download_file, download_sharded_checkpoint, resolve_remote_checkpoint
    kind, target = resolve_remote_checkpoint(uri, LATEST_SHARDED)
    if kind == 'sharded':
        return download_sharded_checkpoint(target, work / 'checkpoint')
    return download_file(target, work / 'checkpoint.pt')


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | torch.dtype | None = None,
                      force: bool = False, max_shard_size: int | str = MAX_SHARD_SIZE) -> Path:
    """``wesar-foundry export``: a saved Composer checkpoint → a stock Llama checkpoint + tokenizer
    (for a wesar_hf model: a stock checkpoint of its own model_type).

    ``checkpoint`` is a sharded checkpoint folder (``<save_folder>/ep<E>-ba<B>``, FSDP's
    ``state_dict_type: sharded``), a save folder (its ``latest-sharded-rank0`` checkpoint, else its
    ``latest-rank0.pt``), or a monolithic Composer checkpoint file, local or on an object store
    (s3://, gs://, oci://, ...: a remote save folder is followed through its
    ``latest-sharded-rank0.symlink`` object, and of a sharded checkpoint only its ``.metadata``
    and ``.distcp`` objects are downloaded, to a temporary folder). ``dtype`` defaults to the training dtype recorded in the checkpoint (fp32;
    bf16/fp16 for ``amp_*`` runs). Only the model weights and the HF config and tokenizer are read,
    in one CPU process; the checkpoint is not modified; the output appears only when complete.
    """
    dtype = parse_dtype(dtype) if dtype is not None else None
    parse_shard_size(max_shard_size)
    src = str(checkpoint)
    remote = is_uri(src)
    protect = () if remote else (src,)
    check_output_dir(out_dir, force, protect)  # fail before reading a large file
    with tempfile.TemporaryDirectory(prefix='wesar-export-') as work:
        if remote:
            local = _download_checkpoint(src, Path(work))
        else:
            local = _resolve_checkpoint(Path(src).expanduser())
            protect += (str(local),)
            check_output_dir(out_dir, force, protect)
        try:
            state = _load_composer_state(local)
            config = _wesar_config(state, local)
        except ValueError as e:
            if not remote:
                raise
            # About the downloaded copy: name the object the user gave.
            raise ValueError(str(e).replace(str(local), src)) from None
        # Popped: once loaded into the model, the weights must have no other holder for the merge
        # to free them.
        model = _load_weights(config, state.pop('model'), local)
        if dtype is None:
            dtype = training_dtype((state.get('metadata') or {}).get('precision', 'fp32'))
        from composer.models import HuggingFaceModel
        tokenizer = HuggingFaceModel.load_huggingface_tokenizer_from_saved_state(
            state['integrations']['huggingface'], tokenizer_save_dir=str(Path(work) / 'tokenizer'))
        del state
        return export_model(model, out_dir, tokenizer=tokenizer, dtype=dtype, force=force, protect=protect,
                            release=True, max_shard_size=max_shard_size)
