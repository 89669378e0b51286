"""The model's options (a typed dataclass checked before any compute) and its HF config class."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import LlamaConfig

from wesar_foundry.options import from_options
from wesar_foundry.init_targets import TARGETS, check_target
from wesar_foundry.sigma_rule import KEYS as SIGMA_KEYS, SigmaChoice, choose_sigma
from wesar_foundry.reparam import GAMMA_INITS, REPARAMS

MLP_TYPES = ('gelu', 'swiglu')
INIT_NAMES = ('wesar_', 'he', 'small')
INIT_CONFIG_KEYS = ('name', 'target') + SIGMA_KEYS
ATTN_IMPLEMENTATIONS = ('eager', 'sdpa', 'flash_attention_2')
# Reparameterizations that store W ~ N(0, σ) and a trained gain.
GATED_REPARAMS = ('wesar', 'weight_norm', 'sigma_reparam')


def _allowed(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f'model.{key}={value!r} is not allowed; allowed values: {", ".join(map(str, allowed))}')


class ReparamKeys:
    """The keys every reparameterized model shares (``reparam``, ``init_config``, ``z_loss``,
    ``sigma_reparam_gamma_init``, ``attn_implementation``): derived values and checks. Mixed into
    the option dataclasses of ``wesar_llama`` and ``wesar_hf``."""

    @property
    def init_name(self) -> str:
        return self.init_config.get('name', 'wesar_')

    @property
    def init_target(self) -> str:
        """The target init: the init function's name for he/small, else init_config.target."""
        if self.init_name in TARGETS:
            return self.init_name
        return self.init_config.get('target', 'he')

    @property
    def sigma_choice(self) -> SigmaChoice:
        """σ² and the gates' constant, from ``init_config`` (a number, or ``auto`` from the lr)."""
        return choose_sigma(self.init_config)

    @property
    def sigma(self) -> float:
        return self.sigma_choice.sigma

    @property
    def sigma2(self) -> float:
        return self.sigma_choice.sigma2

    def validate_reparam_keys(self) -> None:
        """Raise a ValueError naming the key and the allowed values for a bad shared key."""
        _allowed('reparam', self.reparam, REPARAMS)
        _allowed('sigma_reparam_gamma_init', self.sigma_reparam_gamma_init, GAMMA_INITS)
        _allowed('attn_implementation', self.attn_implementation, ATTN_IMPLEMENTATIONS)
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
        choose_sigma(self.init_config)


@dataclass
class WeSaRModelConfig(ReparamKeys):
    """Every key the ``wesar_llama`` model accepts under ``model:`` in a YAML."""

    d_model: int = 768
    """Hidden size d."""
    n_layers: int = 12
    """Number of decoder layers N."""
    n_heads: int = 12
    """Attention heads; d_model must divide by it."""
    vocab_size: int = 32000
    """Rows of the embedding and LM head; at least the tokenizer's length."""
    max_seq_len: int = 2048
    """Longest sequence the RoPE tables are built for."""
    rms_norm_eps: float = 1e-5
    """Epsilon of the pre-RMSNorms."""
    rope_theta: float = 10000.0
    """RoPE base."""
    mlp_type: str = 'gelu'
    """'gelu': the paper's up(d→4d) → exact GeLU → down; 'swiglu': Llama's gated MLP."""
    expansion_ratio: float = 4.0
    """MLP hidden size as a multiple of d_model."""
    reparam: str = 'wesar'
    """How matrices are stored: wesar, none, weight_norm, sigma_reparam, residual_scaling."""
    init_config: dict = field(default_factory=lambda: {'name': 'wesar_', 'target': 'he', 'sigma2': 4e-5})
    """``name`` (a registered param_init_fn: wesar_, he, small), ``target`` (he|small), ``sigma2`` (σ², or ``auto``
    with ``lr: ${optimizer.lr}``, optional ``ref_lr``, ``ref_sigma2``, ``gate_scale``: see ``sigma_rule``)."""
    z_loss: float = 1e-4
    """Weight of z_loss · mean(logsumexp(logits)²) added to the cross-entropy."""
    tie_word_embeddings: bool = False
    """Must stay false: the embedding's output scale and the head's differ, so no tied export exists."""
    sigma_reparam_gamma_init: str = 'one'
    """σReparam's γ at init: 'one' (the paper) or 'spectral' (σ_max(W), the authors' code)."""
    attn_implementation: str = 'sdpa'
    """HF attention kernel: eager, sdpa or flash_attention_2 (GPU only)."""
    use_train_metrics: bool = True
    """Also compute LanguageCrossEntropy/Perplexity on train batches (two extra passes over the logits)."""

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> 'WeSaRModelConfig':
        """Build from YAML keys, rejecting unknown ones by name (llm-foundry checks none)."""
        cfg = from_options(cls, kwargs, 'model (wesar_llama)')
        cfg.validate()
        return cfg

    @property
    def ffn_hidden(self) -> int:
        return int(round(self.expansion_ratio * self.d_model))

    def validate(self) -> None:
        """Raise a ValueError naming the key and the allowed values for any bad option."""
        for key in ('d_model', 'n_layers', 'n_heads', 'vocab_size', 'max_seq_len'):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f'model.{key}={value!r} must be a positive integer')
        if self.d_model % self.n_heads:
            raise ValueError(f'model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}')
        _allowed('mlp_type', self.mlp_type, MLP_TYPES)
        self.validate_reparam_keys()
        if not self.expansion_ratio > 0:
            raise ValueError(f'model.expansion_ratio={self.expansion_ratio!r} must be > 0')
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise ValueError('model.rms_norm_eps and model.rope_theta must be > 0')
        if self.tie_word_embeddings:
            raise ValueError(
                f'model.tie_word_embeddings=True is not allowed (model.reparam={self.reparam!r}): the embedding output '
                'is scaled to std 1 ("Spike No More": a gate, or a constant without gates) and the LM head is not, so '
                'one shared matrix would need two different gains, and no stock tied Llama computes that: such a model '
                'could never be exported. Keep it false (the paper\'s untied embedding and head)')

    def to_hf_config(self) -> 'WeSaRLlamaConfig':
        return WeSaRLlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.d_model,
            intermediate_size=self.ffn_hidden,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_heads,
            hidden_act='gelu' if self.mlp_type == 'gelu' else 'silu',
            max_position_embeddings=self.max_seq_len,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_word_embeddings,
            attention_bias=False,
            mlp_bias=False,
            mlp_type=self.mlp_type,
            reparam=self.reparam,
            init_target=self.init_target,
            sigma2=self.sigma2,
            sigma_choice=self.sigma_choice.as_dict(),
            sigma_reparam_gamma_init=self.sigma_reparam_gamma_init,
            attn_implementation=self.attn_implementation,
        )


class WeSaRLlamaConfig(LlamaConfig):
    """A Llama config plus the reparameterization; its own model_type, so a plain Llama loader
    refuses a gated checkpoint instead of silently dropping its gates."""

    model_type = 'wesar_llama'

    def __init__(self, mlp_type: str = 'gelu', reparam: str = 'wesar', init_target: str = 'he', sigma2: float = 4e-5,
                 sigma_reparam_gamma_init: str = 'one', sigma_choice: dict | None = None, **kwargs):
        self.mlp_type = mlp_type
        self.reparam = reparam
        self.init_target = init_target
        self.sigma2 = sigma2
        # How σ² was chosen (sigma_rule.SigmaChoice.as_dict()), and the gates' constant s.
        self.sigma_choice = sigma_choice or {'sigma2': sigma2, 'gate_scale': 1.0}
        self.sigma_reparam_gamma_init = sigma_reparam_gamma_init
        super().__init__(**kwargs)
