"""The ``model:`` keys every reparameterized model shares, declared once: ``ReparamOptions``.

``wesar_llama`` (``llama_config.WeSaRLlamaOptions``), ``wesar_hf`` (``hf.WeSaRHFOptions``) and
``wesar_mpt`` (``foundry/mpt/config.WeSaRMPTOptions``) subclass it and add their own keys; the two
models transformers builds take its attention kernel too (``TransformersOptions``). MPT picks its
kernel with its own ``attn_config.attn_impl``. Checks raise a ValueError naming the key and the
allowed values, before any compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from wesar_foundry.core.init_targets import TARGETS, check_target, init_target_of
from wesar_foundry.core.options import from_options
from wesar_foundry.core.sigma_rule import KEYS as SIGMA_KEYS, SigmaChoice, choose_sigma
from wesar_foundry.reparam import GAMMA_INITS, MULTIPLIERS, REPARAMS

# The registered init functions (foundry/init_fns.py); each initializes our models only.
INIT_NAMES = ('wesar_', 'he', 'small')
INIT_CONFIG_KEYS = ('name', 'target') + SIGMA_KEYS
ATTN_IMPLEMENTATIONS = ('eager', 'sdpa', 'flash_attention_2')
# What ``multipliers`` unset means with ``reparam: multipliers``: both vectors, the paper's full form.
DEFAULT_MULTIPLIERS = 'row_column'


def check_allowed(key: str, value: Any, allowed: tuple) -> None:
    """Raise a ValueError naming ``model.<key>`` and the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f'model.{key}={value!r} is not allowed; allowed values: {", ".join(map(str, allowed))}')


@dataclass
class ReparamOptions:
    """The keys every reparameterized model (``wesar_llama``, ``wesar_hf``, ``wesar_mpt``) accepts under ``model:``."""

    reparam: str = 'wesar'
    """How matrices are stored: wesar, none, weight_norm, sigma_reparam, residual_scaling, multipliers."""
    multipliers: Optional[str] = None
    """With ``reparam: multipliers``, the vectors besides α: scalar, row, column or row_column (unset: row_column)."""
    init_config: dict = field(default_factory=lambda: {'name': 'wesar_', 'target': 'he', 'sigma2': 4e-5})
    """``name`` (a registered param_init_fn: wesar_, he, small), ``target`` (he|small), ``sigma2`` (σ², or ``auto``
    with ``lr: ${optimizer.lr}``, optional ``ref_lr``, ``ref_sigma2``, ``ref_width``, ``gate_scale``: see ``sigma_rule``)."""
    z_loss: float = 1e-4
    """Weight of z_loss · mean(logsumexp(logits)²) added to the cross-entropy."""
    sigma_reparam_gamma_init: str = 'one'
    """σReparam's γ at init: 'one' (the paper) or 'spectral' (σ_max(W), the authors' code)."""
    use_train_metrics: bool = True
    """Also compute LanguageCrossEntropy/Perplexity on train batches (two extra passes over the logits)."""

    # The registered model these options are for, named in errors (not a key).
    model_name: ClassVar[str] = 'wesar'

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]):
        """Build from the ``model:`` YAML keys, refusing unknown ones by name (llm-foundry checks none), and validate."""
        options = from_options(cls, kwargs, f'model ({cls.model_name})')
        options.validate()
        return options

    @property
    def init_name(self) -> str:
        """The registered init function: ``init_config.name``, ``wesar_`` unless given."""
        return self.init_config.get('name', 'wesar_')

    @property
    def init_target(self) -> str:
        """The target init: the init function's name for he/small, else init_config.target."""
        return init_target_of(self.init_config)

    @property
    def sigma_choice(self) -> SigmaChoice:
        """σ² and the gates' constant, from ``init_config`` (a number, or ``auto`` from the lr); with
        ``ref_width`` the width is needed: ``sigma_choice_at``."""
        return choose_sigma(self.init_config)

    def sigma_choice_at(self, width: int) -> SigmaChoice:
        """``sigma_choice`` for a model of this width (d_model, hidden_size)."""
        return choose_sigma(self.init_config, width=width)

    @property
    def chosen_multipliers(self) -> Optional[str]:
        """``multipliers`` as the model is built: ``row_column`` when unset with ``reparam: multipliers``,
        None with any other reparam (which has no vectors)."""
        if self.reparam != 'multipliers':
            return None
        return DEFAULT_MULTIPLIERS if self.multipliers is None else self.multipliers

    @property
    def sigma(self) -> float:
        return self.sigma_choice.sigma

    @property
    def sigma2(self) -> float:
        return self.sigma_choice.sigma2

    def validate(self) -> None:
        """Raise a ValueError naming the key and the allowed values for a bad shared key."""
        check_allowed('reparam', self.reparam, REPARAMS)
        if self.reparam == 'multipliers':
            check_allowed('multipliers', self.chosen_multipliers, MULTIPLIERS)
        elif self.multipliers is not None:
            raise ValueError(f'model.multipliers={self.multipliers!r} is not allowed with model.reparam={self.reparam!r}: '
                             'only reparam: multipliers has multiplier vectors (allowed values there: '
                             f'{", ".join(MULTIPLIERS)}); remove model.multipliers or set model.reparam: multipliers')
        check_allowed('sigma_reparam_gamma_init', self.sigma_reparam_gamma_init, GAMMA_INITS)
        if not (isinstance(self.z_loss, (int, float)) and self.z_loss >= 0 and math.isfinite(self.z_loss)):
            raise ValueError(f'model.z_loss={self.z_loss!r} must be a finite number >= 0 (the paper uses 1e-4)')
        if not isinstance(self.init_config, dict):
            raise ValueError(f'model.init_config must be a mapping with keys {", ".join(INIT_CONFIG_KEYS)}')
        unknown = sorted(set(self.init_config) - set(INIT_CONFIG_KEYS))
        if unknown:
            raise ValueError(f'unknown model.init_config key(s) {", ".join(unknown)}; allowed keys: {", ".join(INIT_CONFIG_KEYS)}')
        if self.init_name not in INIT_NAMES:
            raise ValueError(f'model.init_config.name={self.init_name!r} is not a wesar-foundry init; allowed: {", ".join(INIT_NAMES)}')
        if self.init_name in TARGETS and 'target' in self.init_config and self.init_config['target'] != self.init_name:
            raise ValueError(f'model.init_config.target={self.init_config["target"]!r} contradicts init_config.name={self.init_name!r}')
        check_target(self.init_target, 'model.init_config.target')
        choose_sigma(self.init_config, width=1)  # the keys; a width only scales σ² (ref_width)


@dataclass
class TransformersOptions(ReparamOptions):
    """``ReparamOptions`` plus the attention kernel: the keys of the models transformers builds (``wesar_llama``, ``wesar_hf``)."""

    attn_implementation: str = 'sdpa'
    """HF attention kernel: eager, sdpa or flash_attention_2 (GPU only)."""

    def validate(self) -> None:
        super().validate()
        check_allowed('attn_implementation', self.attn_implementation, ATTN_IMPLEMENTATIONS)
