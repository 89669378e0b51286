"""Merge a ``wesar_llama`` model into a stock Hugging Face ``LlamaForCausalLM`` (``model_type: llama``).

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
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.accelerate import init_empty_weights

from wesar_foundry.atomic import staged_dir
from wesar_foundry.model.config import WeSaRLlamaConfig
from wesar_foundry.model.modeling import WeSaRLlamaForCausalLM
from wesar_foundry.reparam import ReparamMatrix

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
# llm-foundry's HuggingFaceCheckpointer spells them out; accept both.
DTYPE_ALIASES = {'float32': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16'}
# Composer's Precision values → the dtype the model computed in: the default export dtype.
TRAINING_DTYPES = {'fp32': 'fp32', 'amp_bf16': 'bf16', 'amp_fp16': 'fp16', 'amp_fp8': 'bf16'}

# WeSaRLlamaConfig's own keys, which a stock LlamaConfig must not carry.
_WESAR_CONFIG_KEYS = ('mlp_type', 'reparam', 'init_target', 'sigma2', 'sigma_reparam_gamma_init')
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


@torch.no_grad()
def merged_state_dict(model: WeSaRLlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The stock Llama state dict of ``model``, in fp32: every W̄ merged, GeLU MLP in gated form.

    Call it on a model whose weights are loaded (not on meta). σReparam uses the stored singular
    vectors: ``merged_weight`` runs under no_grad, so no power-iteration step is taken.
    """
    check_tied_gains(model)
    gelu = model.config.mlp_type == 'gelu'
    reparams = model.reparam_modules()
    owned = {f'{name}.{k}' for name, m in reparams.items() for k in m.state_dict()}
    out: dict[str, torch.Tensor] = {}
    for name, module in reparams.items():
        w = module.merged_weight()
        if gelu and name.endswith('.mlp.up_proj'):
            # Our up projection becomes Llama's gate_proj (the one the activation is applied to);
            # Llama's up_proj becomes the constant 1: zero weight, bias 1.
            prefix = name[: -len('up_proj')]
            out[prefix + 'gate_proj.weight'] = w
            out[prefix + 'gate_proj.bias'] = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
            out[prefix + 'up_proj.weight'] = torch.zeros_like(w)
            out[prefix + 'up_proj.bias'] = torch.ones(w.shape[0], dtype=torch.float32, device=w.device)
        elif gelu and name.endswith('.mlp.down_proj'):
            out[name + '.weight'] = w
            out[name + '.bias'] = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
        else:
            out[name + '.weight'] = w
    # Everything that is not a reparameterized matrix (the RMSNorm gains) is copied as it is.
    for key, value in model.state_dict().items():
        if key not in owned:
            out[key] = value.detach().float().clone()
    return out


@torch.no_grad()
def to_llama(model: WeSaRLlamaForCausalLM, dtype: torch.dtype = torch.float32, tokenizer=None) -> LlamaForCausalLM:
    """A stock ``LlamaForCausalLM`` in ``dtype`` computing what ``model`` computes in eval mode."""
    dtype = parse_dtype(dtype)
    if not isinstance(model, WeSaRLlamaForCausalLM):
        raise ValueError(f'expected a WeSaRLlamaForCausalLM, got {type(model).__name__}')
    state = merged_state_dict(model)  # fp32
    config = llama_config(model.config, dtype, tokenizer)
    with init_empty_weights():
        llama = LlamaForCausalLM(config)
    expected = set(llama.state_dict())
    if set(state) != expected:
        raise RuntimeError(f'merged state dict does not match LlamaForCausalLM: missing {sorted(expected - set(state))}, '
                           f'unexpected {sorted(set(state) - expected)}')
    # The single cast of the merged fp32 weights.
    llama.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
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
               protect: tuple = ()) -> Path:
    """Write ``llama`` (+ tokenizer) to ``out_dir`` via a temporary sibling renamed at the end.

    Nothing appears at ``out_dir`` unless the whole checkpoint was written; with ``force`` an
    existing ``out_dir`` is replaced only then.
    """
    out = check_output_dir(out_dir, force, protect)
    with staged_dir(out) as staging:
        llama.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        check_output_dir(out, force, protect)  # created meanwhile by someone else?
    return out


def export_model(model: WeSaRLlamaForCausalLM, out_dir: str | os.PathLike, tokenizer=None,
                 dtype: str | torch.dtype = 'fp32', force: bool = False, protect: tuple = ()) -> Path:
    """Merge ``model`` and write a stock Llama checkpoint (+ tokenizer) to ``out_dir``."""
    dtype = parse_dtype(dtype)
    check_output_dir(out_dir, force, protect)  # fail before any work
    return save_llama(to_llama(model, dtype, tokenizer), out_dir, tokenizer, force, protect)


# ----------------------------------------------------------------------------------------------
# From a saved Composer checkpoint (no training data needed)
# ----------------------------------------------------------------------------------------------

def _load_composer_state(path: Path) -> dict:
    """The ``state`` of a monolithic Composer checkpoint, or a ValueError saying what is wrong."""
    if path.is_dir():
        raise ValueError(
            f'{path} is a directory (a sharded checkpoint?); export reads a monolithic Composer checkpoint '
            'file (.pt): save with fsdp_config.state_dict_type: full, or export during training with the '
            'wesar_hf_checkpointer callback')
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        # Composer's own loader (torch.load, weights_only=False): checkpoints hold Composer objects.
        from composer.utils.checkpoint import safe_torch_load
        ckpt = safe_torch_load(str(path))
    except Exception as e:  # truncated zip, not a pickle, ...
        raise ValueError(f'{path} cannot be read as a Composer checkpoint (truncated or corrupt?): '
                         f'{type(e).__name__}: {e}') from e
    state = ckpt.get('state') if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get('model'), dict):
        raise ValueError(f'{path} is not a Composer checkpoint: no state.model in it')
    hf = (state.get('integrations') or {}).get('huggingface')
    if not isinstance(hf, dict) or 'model' not in hf:
        raise ValueError(f'{path} is not a checkpoint of a Composer HuggingFaceModel: no state.integrations.huggingface '
                         'metadata, so the model config cannot be recovered')
    return state


def _wesar_config(state: dict, path: Path) -> WeSaRLlamaConfig:
    content = dict(state['integrations']['huggingface']['model']['config']['content'])
    model_type = content.get('model_type')
    if model_type != WeSaRLlamaConfig.model_type:
        raise ValueError(f'{path} is not a wesar-foundry checkpoint: its model_type is {model_type!r}, '
                         f'expected {WeSaRLlamaConfig.model_type!r}')
    return WeSaRLlamaConfig.from_dict(content)


def _load_weights(config: WeSaRLlamaConfig, model_state: dict[str, Any], path: Path) -> WeSaRLlamaForCausalLM:
    # Composer stores the HF model under the wrapper's attribute `model`.
    prefix = 'model.'
    weights = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    with init_empty_weights():  # parameters on meta: no second copy of the weights in memory
        model = WeSaRLlamaForCausalLM(config)
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


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | torch.dtype | None = None,
                      force: bool = False) -> Path:
    """``wesar-foundry export``: a saved Composer checkpoint → a stock Llama checkpoint + tokenizer.

    ``dtype`` defaults to the training dtype recorded in the checkpoint (fp32; bf16/fp16 for
    ``amp_*`` runs). The checkpoint is only read; the output appears only when complete.
    ``checkpoint`` may be a local file or a URI Composer can download (s3://, oci://, ...).
    """
    dtype = parse_dtype(dtype) if dtype is not None else None
    src = str(checkpoint)
    remote = '://' in src
    protect = () if remote else (src,)
    check_output_dir(out_dir, force, protect)  # fail before reading a large file
    with tempfile.TemporaryDirectory(prefix='wesar-export-') as work:
        if remote:
            from composer.utils import get_file
            local = Path(work) / 'checkpoint.pt'
            get_file(src, str(local))
        else:
            local = Path(src).expanduser()
        state = _load_composer_state(local)
        config = _wesar_config(state, local)
        model = _load_weights(config, state['model'], local)
        if dtype is None:
            dtype = training_dtype((state.get('metadata') or {}).get('precision', 'fp32'))
        from composer.models import HuggingFaceModel
        tokenizer = HuggingFaceModel.load_huggingface_tokenizer_from_saved_state(
            state['integrations']['huggingface'], tokenizer_save_dir=str(Path(work) / 'tokenizer'))
        del state
        return export_model(model, out_dir, tokenizer=tokenizer, dtype=dtype, force=force, protect=protect)
