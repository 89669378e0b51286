"""Place reparameterized matrices into a built llm-foundry MPT, by module name.

llm-foundry builds MPT's linear layers through its ``fcs`` registry (``build_fc``), which is told
the shapes but not what a layer is for; the embedding (``SharedEmbedding``) and the LM head are not
``fcs`` layers at all. So roles are attached after construction, in one pass over the whole model:
each ``nn.Linear``/``nn.Embedding`` is looked up by its qualified name in ``MPT_ROLES`` and replaced
by the reparameterized matrix of that role, with its shape, bias and device. Any matrix the table
does not name is an error naming it, and so is any other ≥2-D parameter left outside a
reparameterized matrix (MoE experts, TransformerEngine weights): never a silently plain layer.
No MPT code is copied: its forward calls the replaced modules as it called the linear layers.

Names (llm-foundry 0.22 ``models/layers/attention.py``, ``ffn.py``, ``mpt/modeling_mpt.py``):
``transformer.wte``, ``transformer.blocks.{i}.attn.Wqkv`` (fused [Q | K | V] rows; ``Wq``/``Wk``/``Wv``
with ``fused_qkv: false``), ``…attn.out_proj``, ``…ffn.up_proj`` / ``gate_proj`` (``mptglu``) /
``down_proj``, ``lm_head``; with ``fuse_norm_attn_norm`` the attention sits under ``…norm_attn_norm.attn``,
which the suffix patterns match too.

The fused ``Wqkv`` gets one gate (role ``qkv``): every target gives q, k and v the same std, so one
gate reproduces each part's target, and the merge is the plain α·W.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from wesar_foundry.reparam import ReparamMatrix

MPT_ROLES: tuple[tuple[str, str], ...] = (
    (r'^transformer\.wte$', 'emb'),
    (r'\.attn\.Wqkv$', 'qkv'),
    (r'\.attn\.Wq$', 'q'),
    (r'\.attn\.Wk$', 'k'),
    (r'\.attn\.Wv$', 'v'),
    (r'\.attn\.out_proj$', 'o'),
    (r'\.ffn\.gate_proj$', 'gate'),
    (r'\.ffn\.up_proj$', 'up'),
    (r'\.ffn\.down_proj$', 'down'),
    (r'^lm_head$', 'head'),
)

# Attributes llm-foundry sets on built layers that still mean something on the replacement.
_CARRIED = ('_fsdp_wrap',)

# (rows, cols, role, kind, bias, device) → the reparameterized module.
MatrixFactory = Callable[..., ReparamMatrix]


def role_of(name: str) -> str | None:
    """The role ``MPT_ROLES`` gives the module ``name``, or None."""
    return next((role for pattern, role in MPT_ROLES if re.search(pattern, name)), None)


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition('.')
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def place_matrices_(model: nn.Module, make: MatrixFactory) -> dict[str, str]:
    """Replace every linear layer and embedding of ``model`` by ``make(...)`` for its role; return
    {name: role}. Raises a ValueError naming every matrix without a role."""
    plain = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    roles = {n: role_of(n) for n in plain}
    unmatched = [n for n, r in roles.items() if r is None]
    if unmatched:
        raise ValueError(f'wesar_mpt: no role for matrix {", ".join(unmatched)}: an MPT option built a layer the '
                         'role table (wesar_foundry/foundry/mpt/gating.py: MPT_ROLES) does not know; it would be '
                         'left a plain layer, so it is refused')
    for name, old in plain.items():
        embedding = isinstance(old, nn.Embedding)
        rows, cols = old.weight.shape
        new = make(rows, cols, roles[name], 'embedding' if embedding else 'linear',
                   bias=not embedding and old.bias is not None, device=old.weight.device)
        for attr in _CARRIED:
            if hasattr(old, attr):
                setattr(new, attr, getattr(old, attr))
        _set_child(model, name, new)
    check_no_plain_matrices(model)
    return roles


def check_no_plain_matrices(model: nn.Module) -> None:
    """Raise a ValueError naming every ≥2-D parameter that no reparameterized matrix owns."""
    owned = {id(p) for m in model.modules() if isinstance(m, ReparamMatrix) for p in m.parameters()}
    stray = [n for n, p in model.named_parameters() if p.dim() >= 2 and id(p) not in owned]
    if stray:
        raise ValueError(f'wesar_mpt: parameter(s) {", ".join(stray)} are matrices outside any reparameterized layer '
                         '(not nn.Linear/nn.Embedding modules); this MPT variant cannot be gated')
