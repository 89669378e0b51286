"""Which matrix is which in a Hugging Face causal decoder: role tables per family (core: stdlib only).

A role table maps regular expressions on a module's qualified name (``model.layers.3.mlp.up_proj``)
to a matrix role (``init_targets.ROLES``, or a fused role ``qkv``/``gate_up``). The first pattern
that ``re.search``-es the name wins; a YAML override (``roles: {<regex>: <role>}``) is tried before
the table. Every ``nn.Linear``/``nn.Embedding`` of the model must get a role: an unmatched matrix is
an error naming it, never a silently plain layer.

Facts per family are from transformers 4.51.3 (``models/<family>/modeling_<family>.py``):

- llama, mistral, qwen2, qwen3: ``model.embed_tokens``, ``self_attn.{q,k,v,o}_proj``,
  ``mlp.{gate,up,down}_proj``, ``lm_head``. Qwen2 always has q/k/v biases; Qwen3 adds per-head
  RMSNorms on q and k (the q/k gates then only rescale what the norm removes: harmless).
- gpt_neox: ``gpt_neox.embed_in``, ``attention.query_key_value`` (fused, interleaved per head),
  ``attention.dense``, ``mlp.dense_h_to_4h`` / ``dense_4h_to_h`` (ungated GeLU MLP, biases),
  ``embed_out``; LayerNorms, parallel residual.
- phi3: ``self_attn.qkv_proj`` ([Q | K | V] rows), ``mlp.gate_up_proj`` ([gate | up] rows).

Fused matrices get one gate (one role, ``qkv`` or ``gate_up``): every target in
``init_targets`` gives their parts the same std, so one gate reproduces each part's target, and
the merge is the plain α·W whatever the row layout (per head interleaved for GPT-NeoX).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from wesar_foundry.init_targets import MATRIX_ROLES

_LLAMA_LAYOUT: tuple[tuple[str, str], ...] = (
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

ROLE_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    'llama': _LLAMA_LAYOUT,
    'mistral': _LLAMA_LAYOUT,
    'qwen2': _LLAMA_LAYOUT,
    'qwen3': _LLAMA_LAYOUT,
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

# Families refused by name, with the reason: their forward does something to the embedding or the
# logits that the role tables do not model (yet), so a target init would silently be off.
REFUSED_FAMILIES: dict[str, str] = {
    'gemma': 'multiplies the embedding output by √hidden_size and initializes its RMSNorm weights to 0 (x̂·(1+w))',
    'gemma2': 'multiplies the embedding output by √hidden_size and initializes its RMSNorm weights to 0 (x̂·(1+w))',
    'gemma3_text': 'multiplies the embedding output by √hidden_size and initializes its RMSNorm weights to 0 (x̂·(1+w))',
    'granite': 'scales the embedding (embedding_multiplier), the residual branches and the logits by config constants',
    'granitemoe': 'scales the embedding (embedding_multiplier), the residual branches and the logits by config constants',
}


def check_family(model_type: str) -> tuple[tuple[str, str], ...]:
    """The role table of ``model_type``, or a ValueError with the reason it has none."""
    if model_type in ROLE_TABLES:
        return ROLE_TABLES[model_type]
    supported = ', '.join(ROLE_TABLES)
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


def assign_roles(names: Iterable[str], model_type: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The role of every matrix in ``names`` (qualified module names), overrides first, then the table.

    Raises a ValueError naming every matrix no pattern matches, and every override pattern that
    matches no matrix (a typo would otherwise change nothing, silently).
    """
    overrides = dict(overrides or {})
    check_overrides(overrides)
    table = check_family(model_type)
    patterns = [(p, re.compile(p), r, True) for p, r in overrides.items()]
    patterns += [(p, re.compile(p), r, False) for p, r in table]
    roles: dict[str, str] = {}
    unmatched: list[str] = []
    used: set[str] = set()
    for name in names:
        hit = next(((p, r, mine) for p, rx, r, mine in patterns if rx.search(name)), None)
        if hit is None:
            unmatched.append(name)
            continue
        pattern, role, mine = hit
        roles[name] = role
        if mine:
            used.add(pattern)
    if unmatched:
        raise ValueError(f'wesar_hf ({model_type}): no role for matrix {", ".join(unmatched)}; give each one with '
                         f'model.roles: {{<regex>: <role>}} (roles: {", ".join(MATRIX_ROLES)})')
    unused = [p for p in overrides if p not in used]
    if unused:
        raise ValueError(f'model.roles: pattern(s) {", ".join(map(repr, unused))} match no matrix of this '
                         f'{model_type} model (names look like {next(iter(roles), "?")!r})')
    return roles
