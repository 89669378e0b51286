"""``wesar_mpt``'s options: our keys as a typed dataclass (``WeSaRMPTOptions``), every other key llm-foundry's ``MPTConfig``'s.

What a stock MPT checkpoint cannot express, or what has no role in ``init_targets``, is refused
here, before any compute, with the reason:

- ``tie_word_embeddings: true`` (MPT's default): one stored matrix would be both the embedding,
  whose output std is 1 (a gate, or the "Spike No More" constant without gates), and the LM head,
  whose target is √(1/d) (He) or √(2/(5d)) (Small). Two gains on one matrix train, but a tied
  stock MPT applies the one matrix unscaled in both places, so no export computes the same
  function (MPT's ``logit_scale`` could carry a scalar ratio, but not Weight Normalization's
  per-row gains, and vLLM ignores it). One shared gate would give one of the two roles the wrong
  std. So the YAML must say ``tie_word_embeddings: false``, the paper's untied embedding and head.
- learned position embeddings (``learned_pos_emb``, MPT's default unless ``alibi`` or ``rope``):
  ``transformer.wpe`` is a second embedding added to the residual stream, with no role and no
  target std in the method; use ``attn_config.rope`` (``rope_impl: hf`` on CPU) or ``alibi``.
- ``fc_type`` other than ``torch`` and ``ffn_type`` other than ``mptmlp``/``mptglu``: their weights
  are not ``nn.Linear`` modules (TransformerEngine, MoE experts held as raw parameters).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from llmfoundry.models.mpt import MPTConfig

from wesar_foundry.core.roles import check_overrides
from wesar_foundry.models.reparam_options import ReparamOptions

FC_TYPES = ('torch',)
FFN_TYPES = ('mptmlp', 'mptglu')
# MPT's own YAML keys: its config's arguments (PretrainedConfig takes any other key silently).
MPT_KEYS = tuple(p for p in inspect.signature(MPTConfig.__init__).parameters if p not in ('self', 'kwargs'))


@dataclass
class WeSaRMPTOptions(ReparamOptions):
    """The keys ``wesar_mpt`` adds under ``model:`` (the shared ones: ``ReparamOptions``; its
    ``init_config`` replaces MPT's); every other key is an ``MPTConfig`` argument."""

    model_name: ClassVar[str] = 'wesar_mpt'

    roles: dict = field(default_factory=dict)
    """Role overrides {<regex on the module name>: <role>}, tried before MPT's role table (``roles.MPT_ROLES``)."""

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple['WeSaRMPTOptions', dict[str, Any]]:
        """Our options and MPT's keys from the ``model:`` mapping, refusing any key neither has."""
        ours = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - ours - set(MPT_KEYS))
        if unknown:
            raise ValueError(f'model ({cls.model_name}): unknown option(s) {", ".join(unknown)}; allowed: '
                             f'{", ".join(sorted(ours))} and MPTConfig\'s {", ".join(MPT_KEYS)}')
        options = cls(**{k: v for k, v in kwargs.items() if k in ours})
        options.validate()
        return options, {k: v for k, v in kwargs.items() if k not in ours}

    def validate(self) -> None:
        """Raise a ValueError naming the key and the allowed values for any bad option."""
        check_overrides(self.roles)
        super().validate()


class WeSaRMPTConfig(MPTConfig):
    """An ``MPTConfig`` plus the reparameterization; its own model_type, so that llm-foundry's and
    transformers' MPT loaders refuse a gated checkpoint instead of silently dropping its gates."""

    model_type = 'wesar_mpt'

    def __init__(self, reparam: str = 'wesar', sigma_reparam_gamma_init: str = 'one', roles: dict | None = None,
                 multipliers: str | None = None, **kwargs: Any):
        self.reparam = reparam
        # The vectors of reparam multipliers (ReparamOptions.chosen_multipliers); None for the others.
        self.multipliers = multipliers
        self.sigma_reparam_gamma_init = sigma_reparam_gamma_init
        # Role overrides (model.roles): saved with the config, so that a rebuild places the same roles.
        self.roles = dict(roles or {})
        super().__init__(**kwargs)


def check_expressible(config: MPTConfig) -> None:
    """Raise a ValueError with the reason for an MPT that gated matrices cannot express (module doc)."""
    if config.tie_word_embeddings:
        raise ValueError(
            'model.tie_word_embeddings=True (MPT\'s default) is not allowed for wesar_mpt: transformer.wte would be both '
            'the embedding (output std 1) and the LM head (target std √(1/d)), two different gains on one matrix, and a '
            'tied stock MPT uses the one matrix unscaled in both places, so the model could never be exported. Set '
            'model.tie_word_embeddings: false (the paper\'s untied embedding and head)')
    if config.learned_pos_emb:
        raise ValueError(
            'model.learned_pos_emb=True (MPT\'s default without rope or alibi) is not allowed for wesar_mpt: '
            'transformer.wpe is a second embedding added to the residual stream, with no role or target std in the '
            'method. Use rotary embeddings (model.attn_config: {rope: true, rope_impl: hf}) or alibi')
    if config.fc_type['name'] not in FC_TYPES:
        raise ValueError(f'model.fc_type={config.fc_type["name"]!r} is not allowed for wesar_mpt: its layers are not '
                         f'nn.Linear modules we can reparameterize; allowed: {", ".join(FC_TYPES)}')
    ffn_type = config.ffn_config['ffn_type']
    if ffn_type not in FFN_TYPES:
        raise ValueError(f'model.ffn_config.ffn_type={ffn_type!r} is not allowed for wesar_mpt: it stores weights '
                         f'outside nn.Linear modules; allowed: {", ".join(FFN_TYPES)}')
