"""Which matrix is which: every family's role table, and name heuristics for other models (core: stdlib only).

A role table maps regular expressions on a module's qualified name (``model.layers.3.mlp.up_proj``)
to a matrix role (``init_targets.ROLES``, or a fused role ``qkv``/``gate_up``). The first pattern
that ``re.search``-es the name wins; a YAML override (``roles: {<regex>: <role>}``, for ``wesar_hf``
and ``wesar_mpt``) is tried before the table. Every ``nn.Linear``/``nn.Embedding`` of a model must
get a role: an unmatched matrix is an error naming it, never a silently plain layer.

The tables, by family (transformers 4.51.3 ``models/<family>/modeling_<family>.py``, llm-foundry
0.22 ``models/layers/{attention,ffn}.py`` and ``models/mpt/modeling_mpt.py``):

- ``LLAMA_ROLES``: ``wesar_llama``, and transformers' llama, mistral, qwen2, qwen3 under ``wesar_hf``:
  ``model.embed_tokens``, ``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``, ``lm_head``.
  Qwen2 always has q/k/v biases; Qwen3 adds per-head RMSNorms on q and k (the q/k gates then only
  rescale what the norm removes: harmless).
- gpt_neox (``wesar_hf``): ``gpt_neox.embed_in``, ``attention.query_key_value`` (fused, interleaved
  per head), ``attention.dense``, ``mlp.dense_h_to_4h`` / ``dense_4h_to_h`` (ungated GeLU MLP,
  biases), ``embed_out``; LayerNorms, parallel residual.
- phi3 (``wesar_hf``): ``self_attn.qkv_proj`` ([Q | K | V] rows), ``mlp.gate_up_proj`` ([gate | up] rows).
- ``MPT_ROLES``: llm-foundry's MPT (``wesar_mpt``): ``transformer.wte``, ``….attn.Wqkv`` (fused
  [Q | K | V] rows; ``Wq``/``Wk``/``Wv`` with ``fused_qkv: false``), ``….attn.out_proj``,
  ``….ffn.up_proj`` / ``gate_proj`` (``mptglu``) / ``down_proj``, ``lm_head``; with
  ``fuse_norm_attn_norm`` the attention sits under ``….norm_attn_norm.attn``, which the suffix
  patterns match too. MPT's layers come from its ``fcs`` registry, which is told their shapes but
  not what they are for: the roles are attached by name after construction.

Fused matrices get one gate (one role, ``qkv`` or ``gate_up``): every target in
``init_targets`` gives their parts the same std, so one gate reproduces each part's target, and
the merge is the plain α·W whatever the row layout (per head interleaved for GPT-NeoX).

``infer_role``/``infer_layer`` are looser: they guess a role and a block index from the parameter
names of any model, ours or not (the update-ratio monitor and ``wesar-foundry plot`` group by them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from wesar_foundry.core.init_targets import MATRIX_ROLES

RoleTable = tuple[tuple[str, str], ...]

LLAMA_ROLES: RoleTable = (
    (r'^model\.embed_tokens$', 'emb'),
    (r'\.self_attn\.q_proj$', 'q'),
    (r'\.self_attn\.k_proj$', 'k'),
    (r'\.self_attn\.v_proj$', 'v'),
    (r'\.self_attn\.o_proj$', 'o'),
    (r'\.mlp\.gate_proj$', 'gate'),
    (r'\.mlp\.up_proj$', 'up'),
    (r'\.mlp\.down_proj$', 'down'),
    (r'^lm_head$', 'head'),
)

MPT_ROLES: RoleTable = (
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

# The families ``wesar_hf`` builds, by transformers model_type.
HF_ROLE_TABLES: dict[str, RoleTable] = {
    'llama': LLAMA_ROLES,
    'mistral': LLAMA_ROLES,
    'qwen2': LLAMA_ROLES,
    'qwen3': LLAMA_ROLES,
    'gpt_neox': (
        (r'^gpt_neox\.embed_in$', 'emb'),
        (r'\.attention\.query_key_value$', 'qkv'),
        (r'\.attention\.dense$', 'o'),
        (r'\.mlp\.dense_h_to_4h$', 'up'),
        (r'\.mlp\.dense_4h_to_h$', 'down'),
        (r'^embed_out$', 'head'),
    ),
    'phi3': (
        (r'^model\.embed_tokens$', 'emb'),
        (r'\.self_attn\.qkv_proj$', 'qkv'),
        (r'\.self_attn\.o_proj$', 'o'),
        (r'\.mlp\.gate_up_proj$', 'gate_up'),
        (r'\.mlp\.down_proj$', 'down'),
        (r'^lm_head$', 'head'),
    ),
}

# Families ``wesar_hf`` refuses by name, with the reason: their forward does something to the
# embedding or the logits that the role tables do not model (yet), so a target init would silently be off.
REFUSED_FAMILIES: dict[str, str] = {
    'gemma': 'multiplies the embedding output by √hidden_size and initializes its RMSNorm weights to 0 (x̂·(1+w))',
    'gemma2': 'multiplies the embedding output by √hidden_size and initializes its RMSNorm weights to 0 (x̂·(1+w))',
    'gemma3_text': 'multiplies the embedding output by √hidden_size and initializes its RMSNorm weights to 0 (x̂·(1+w))',
    'granite': 'scales the embedding (embedding_multiplier), the residual branches and the logits by config constants',
    'granitemoe': 'scales the embedding (embedding_multiplier), the residual branches and the logits by config constants',
}


def check_family(model_type: str) -> RoleTable:
    """The ``wesar_hf`` role table of the transformers ``model_type``, or a ValueError with the reason it has none."""
    if model_type in HF_ROLE_TABLES:
        return HF_ROLE_TABLES[model_type]
    supported = ', '.join(HF_ROLE_TABLES)
    if model_type in REFUSED_FAMILIES:
        raise ValueError(f'wesar_hf: model_type {model_type!r} is not supported: it {REFUSED_FAMILIES[model_type]}, '
                         f'which the init targets do not account for. Supported: {supported}')
    raise ValueError(f'wesar_hf: model_type {model_type!r} has no role table (its embedding scaling, tying and fused '
                     f'layouts are unchecked). Supported: {supported}')


def check_overrides(overrides: Mapping[str, str], key: str = 'model.roles') -> None:
    """Raise a ValueError naming the pattern for a bad regex or an unknown role."""
    if not isinstance(overrides, Mapping):
        raise ValueError(f'{key} must be a mapping {{<regex>: <role>}}, got {overrides!r}')
    for pattern, role in overrides.items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f'{key}: {pattern!r} is not a valid regular expression: {e}') from None
        if role not in MATRIX_ROLES:
            raise ValueError(f'{key}[{pattern!r}]={role!r} is not a matrix role; allowed: {", ".join(MATRIX_ROLES)}')


def assign_roles(names: Iterable[str], table: RoleTable, overrides: Mapping[str, str] | None = None, *,
                 model: str) -> dict[str, str]:
    """The role of every matrix in ``names`` (qualified module names), overrides first, then ``table``.

    Raises a ValueError naming ``model`` (the registered model, e.g. ``wesar_mpt``) and every
    matrix no pattern matches, and every override pattern that matches no matrix (a typo would
    otherwise change nothing, silently).
    """
    overrides = dict(overrides or {})
    check_overrides(overrides)
    patterns = [(p, re.compile(p), r, True) for p, r in overrides.items()]
    patterns += [(p, re.compile(p), r, False) for p, r in table]
    roles: dict[str, str] = {}
    unmatched: list[str] = []
    used: set[str] = set()
    for name in names:
        hit = next(((p, r, override) for p, rx, r, override in patterns if rx.search(name)), None)
        if hit is None:
            unmatched.append(name)
            continue
        pattern, role, override = hit
        roles[name] = role
        if override:
            used.add(pattern)
    if unmatched:
        raise ValueError(f'{model}: no role for matrix {", ".join(unmatched)}; give each one with '
                         f'model.roles: {{<regex>: <role>}} (roles: {", ".join(MATRIX_ROLES)})')
    unused = [p for p in overrides if p not in used]
    if unused:
        raise ValueError(f'model.roles: pattern(s) {", ".join(map(repr, unused))} match no matrix of this '
                         f'{model} model (names look like {next(iter(roles), "?")!r})')
    return roles


# Names of models that are not ours, first match wins: the MLP's c_proj (GPT-2) before the attention's.
_ROLE_HEURISTICS: list[tuple[str, re.Pattern]] = [(role, re.compile(p)) for role, p in [
    ('emb', r'(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings|embed_in|token_embedding)(\.|$)'),
    ('head', r'(^|\.)(lm_head|embed_out|output_layer)(\.|$)|^output(\.|$)'),
    ('qkv', r'(^|\.)(Wqkv|c_attn|query_key_value|qkv_proj|qkv)(\.|$)'),
    ('q', r'(^|\.)(q_proj|query|wq|to_q)(\.|$)'),
    ('k', r'(^|\.)(k_proj|key|wk|to_k)(\.|$)'),
    ('v', r'(^|\.)(v_proj|value|wv|to_v)(\.|$)'),
    ('gate', r'(^|\.)(gate_proj|w1|gate_up_proj)(\.|$)'),
    ('up', r'(^|\.)(up_proj|fc1|c_fc|fc_in|dense_h_to_4h|w3|wi)(\.|$)'),
    ('down', r'(^|\.)(down_proj|fc2|fc_out|dense_4h_to_h|w2|wo_mlp)(\.|$)|(mlp|ffn|feed_forward)\.c_proj(\.|$)'),
    ('o', r'(^|\.)(o_proj|out_proj|c_proj|wo|to_out|dense)(\.|$)'),
]]
_LAYER = re.compile(r'(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)')


def infer_role(name: str) -> str | None:
    """The matrix role of a (cleaned) parameter or module name, None when nothing matches."""
    for role, pattern in _ROLE_HEURISTICS:
        if pattern.search(name):
            return role
    return None


def infer_layer(name: str) -> int | None:
    """The block index in a name like ``model.layers.3.mlp.up_proj.weight``."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None
