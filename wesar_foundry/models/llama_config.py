"""``wesar_llama``'s options (a typed dataclass checked before any compute) and its HF config class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from transformers import LlamaConfig

from wesar_foundry.models.reparam_options import TransformersOptions, check_allowed
from wesar_foundry._moved import renamed

MLP_TYPES = ('gelu', 'swiglu')


@dataclass
class WeSaRLlamaOptions(TransformersOptions):
    """Every key the ``wesar_llama`` model accepts under ``model:`` in a YAML (the shared ones: ``ReparamOptions``)."""

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
    tie_word_embeddings: bool = False
    """Must stay false: the embedding's output scale and the head's differ, so no tied export exists."""

    model_name: ClassVar[str] = 'wesar_llama'

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
        check_allowed('mlp_type', self.mlp_type, MLP_TYPES)
        super().validate()
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
        choice = self.sigma_choice_at(self.d_model)
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
            multipliers=self.chosen_multipliers,
            init_target=self.init_target,
            sigma2=choice.sigma2,
            sigma_choice=choice.as_dict(),
            sigma_reparam_gamma_init=self.sigma_reparam_gamma_init,
            attn_implementation=self.attn_implementation,
        )


class WeSaRLlamaConfig(LlamaConfig):
    """A Llama config plus the reparameterization; its own model_type, so a plain Llama loader
    refuses a gated checkpoint instead of silently dropping its gates."""

    model_type = 'wesar_llama'

    def __init__(self, mlp_type: str = 'gelu', reparam: str = 'wesar', init_target: str = 'he', sigma2: float = 4e-5,
                 sigma_reparam_gamma_init: str = 'one', sigma_choice: dict | None = None, multipliers: str | None = None,
                 **kwargs):
        self.mlp_type = mlp_type
        self.reparam = reparam
        # The vectors of reparam multipliers (ReparamOptions.chosen_multipliers); None for the others.
        self.multipliers = multipliers
        self.init_target = init_target
        self.sigma2 = sigma2
        # How σ² was chosen (sigma_rule.SigmaChoice.as_dict()), and the gates' constant s.
        self.sigma_choice = sigma_choice or {'sigma2': sigma2, 'gate_scale': 1.0}
        self.sigma_reparam_gamma_init = sigma_reparam_gamma_init
        super().__init__(**kwargs)


# 0.1's name, for one release.
__getattr__ = renamed(__name__, {'WeSaRModelConfig': 'WeSaRLlamaOptions'}, globals())
