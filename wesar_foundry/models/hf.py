"""``wesar_hf``: a stock Hugging Face causal decoder, built from its config, every matrix reparameterized.

The architecture comes from a config (a hub name or a local folder with ``config.json``, or offline
a ``model_type`` plus size keys in ``config_overrides``); weights are never loaded: WeSaR trains
from scratch. The model is transformers' own class for that ``model_type`` (``LlamaForCausalLM``,
``GPTNeoXForCausalLM``, ...) through a subclass (``gated_class``) that, after the stock
``__init__``, replaces every ``nn.Linear``/``nn.Embedding`` by the chosen reparameterization
(``placement.place_matrices``). The role of each matrix (and so its target std) comes from the
family's table in ``wesar_foundry.core.roles``; a bias stays a bias (``placement.with_bias``). Module and parameter names are the stock ones plus each method's gains
(``model.layers.0.self_attn.q_proj.alpha``), so the merge is a state dict of the stock class.

The reparameterization options travel inside the HF config, as one extra attribute ``wesar_hf``
(a dict: reparam, the multipliers' vectors, init target, σ², σReparam's γ init, role
overrides). Whatever rebuilds the model from its config (llm-foundry's HF checkpointer,
``wesar-foundry export`` from a Composer checkpoint) therefore rebuilds the gated model, not the
stock one.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from wesar_foundry.core.roles import check_family, check_overrides
from wesar_foundry.models.llama import ReparamModelMixin
from wesar_foundry.models.placement import Reparameterization, place_matrices
from wesar_foundry.models.reparam_options import TransformersOptions

# The config attribute that carries the reparameterization options.
CONFIG_KEY = 'wesar_hf'
# Keys of a config.json that are not constructor arguments of the config class.
_NOT_FIELDS = ('model_type', 'auto_map', 'transformers_version', '_name_or_path', '_attn_implementation_autoset')
TOKEN_IDS = ('bos_token_id', 'eos_token_id', 'pad_token_id')


@dataclass
class WeSaRHFOptions(TransformersOptions):
    """Every key the ``wesar_hf`` model accepts under ``model:`` in a YAML (besides ``name``, ``init_device``;
    the shared ones: ``ReparamOptions``).

    llm-foundry's ``hf_causal_lm`` keys that make sense from scratch are accepted too, so that an
    existing YAML switches by changing ``name:`` alone.
    """

    pretrained_model_name_or_path: str | None = None
    """A hub name (online) or a local folder with a config.json: the architecture to build (never its weights)."""
    model_type: str | None = None
    """Offline instead of the above: a transformers model_type (llama, mistral, qwen2, qwen3, gpt_neox, phi3)."""
    config_overrides: dict = field(default_factory=dict)
    """HF config keys set on top of the config (hidden_size, num_hidden_layers, ...); unknown keys are refused."""
    roles: dict = field(default_factory=dict)
    """Role overrides {<regex on the module name>: <role>}, tried before the family's role table."""
    pretrained: bool = False
    """Must stay false: wesar_hf builds the architecture from scratch (hf_causal_lm's key, accepted for its YAMLs)."""
    use_flash_attention_2: bool = False
    """hf_causal_lm's spelling of attn_implementation: flash_attention_2."""
    use_auth_token: bool = False
    """Send the stored hub token when reading a gated hub config."""
    trust_remote_code: bool = False
    """Accepted for hf_causal_lm YAMLs; no remote code ever runs: only transformers' own families are built."""

    model_name: ClassVar[str] = 'wesar_hf'

    def validate(self) -> None:
        """Raise a ValueError naming the key and the allowed values for any bad option."""
        if (self.pretrained_model_name_or_path is None) == (self.model_type is None):
            raise ValueError('wesar_hf: give exactly one of model.pretrained_model_name_or_path (a hub name or a local '
                             'folder with config.json) and model.model_type (offline, sizes in model.config_overrides)')
        if self.pretrained:
            raise ValueError('model.pretrained=True is not allowed: wesar_hf trains from scratch (it stores every matrix '
                             'as W ~ N(0, σ) with a gain carrying the target init, which pretrained weights are not); '
                             'set pretrained: false')
        if not isinstance(self.config_overrides, dict):
            raise ValueError(f'model.config_overrides must be a mapping of HF config keys, got {self.config_overrides!r}')
        check_overrides(self.roles)
        super().validate()

    @property
    def attention(self) -> str:
        return 'flash_attention_2' if self.use_flash_attention_2 else self.attn_implementation

    def config_entry(self, width: int) -> dict[str, Any]:
        """What the HF config carries under ``wesar_hf``: everything needed to rebuild the model."""
        choice = self.sigma_choice_at(width)
        return {'reparam': self.reparam, 'multipliers': self.chosen_multipliers, 'init_target': self.init_target,
                'sigma2': choice.sigma2, 'sigma_choice': choice.as_dict(),
                'sigma_reparam_gamma_init': self.sigma_reparam_gamma_init, 'roles': dict(self.roles)}


def tied_refusal(model_type: str) -> str:
    return (f'model.config_overrides.tie_word_embeddings: wesar_hf refuses a tied {model_type} model: the embedding '
            '(target: output std 1) and the LM head (target std √(1/d)) have separate gains, while a stock tied '
            f'{model_type} checkpoint stores one matrix for both, so the trained model could never be exported to '
            'its own architecture. Set tie_word_embeddings: false in model.config_overrides')


def build_hf_config(options: WeSaRHFOptions, tokenizer=None) -> PretrainedConfig:
    """The stock HF config of the model to build, with ``wesar_hf`` options attached; refuses what
    cannot be trained and exported (unsupported family, tied embedding and head) with the reason.

    Overrides are applied to the config's *arguments* and the config built once, so a key the
    config derives in its constructor follows the overrides unless the config.json states it (e.g.
    Qwen2's head dim, hidden_size / heads; llm-foundry's ``hf_causal_lm`` instead sets overrides
    on the built config, where derived keys keep their old values). The tokenizer's bos/eos/pad ids
    replace the family's defaults unless ``config_overrides`` sets them (a default pad id outside a
    small vocabulary would not even build).
    """
    overrides = dict(options.config_overrides)
    if options.model_type is not None:
        model_type, fields = options.model_type, {}
    else:
        fields, _ = PretrainedConfig.get_config_dict(options.pretrained_model_name_or_path,
                                                     token=True if options.use_auth_token else None)
        model_type = fields.get('model_type')
    check_family(model_type)
    defaults = AutoConfig.for_model(model_type)
    unknown = sorted(k for k in overrides if not hasattr(defaults, k))
    if unknown:
        raise ValueError(f'model.config_overrides: {model_type} configs have no key(s) {", ".join(unknown)}; '
                         f'known keys: {", ".join(sorted(k for k in defaults.to_dict() if not k.startswith("_")))}')
    if tokenizer is not None:
        for name in TOKEN_IDS:
            if name not in overrides and getattr(tokenizer, name, None) is not None:
                fields[name] = getattr(tokenizer, name)
    fields = {k: v for k, v in {**fields, **overrides}.items() if k not in _NOT_FIELDS}
    config = AutoConfig.for_model(model_type, **fields)
    if config.tie_word_embeddings:
        raise ValueError(tied_refusal(model_type))
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ValueError(f'model.config_overrides.vocab_size={config.vocab_size} is smaller than the tokenizer '
                         f'({len(tokenizer)} tokens); set it >= {len(tokenizer)}')
    config._attn_implementation = options.attention
    setattr(config, CONFIG_KEY, options.config_entry(config.hidden_size))
    return config


def stock_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """transformers' own causal-LM class for ``config`` (``LlamaForCausalLM`` for a LlamaConfig)."""
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]


class GatedHFModel(ReparamModelMixin):
    """Mixed in front of a stock causal-LM class by ``gated_class``: after the stock ``__init__``,
    every matrix is replaced by the reparameterization ``config.wesar_hf`` names."""

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        entry = getattr(config, CONFIG_KEY)
        how = Reparameterization(reparam=entry['reparam'], init_target=entry['init_target'], d_model=config.hidden_size,
                                 n_layers=config.num_hidden_layers, gamma_init=entry['sigma_reparam_gamma_init'],
                                 gate_scale=entry.get('sigma_choice', {}).get('gate_scale', 1.0),
                                 multipliers=entry.get('multipliers'))
        place_matrices(self, how, check_family(config.model_type), entry.get('roles'),
                       model_name=f'wesar_hf ({config.model_type})')
        self.attach_forward_clock()

    def save_pretrained(self, *args, **kwargs):
        # Saved as it is, the checkpoint would name the stock model_type, and a stock loader would
        # drop every gate with only a warning: a silently different model.
        raise RuntimeError('a wesar_hf model is saved merged into its stock architecture: use the wesar_hf_checkpointer '
                           'callback, wesar-foundry export, or wesar_foundry.export.export_model')


@functools.cache
def gated_class(base: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """The subclass of the stock class ``base`` that places reparameterized matrices (cached: one per class)."""
    name = f'Gated{base.__name__}'
    return type(name, (GatedHFModel, base), {'__module__': __name__, '__qualname__': name,
                                              '__doc__': f'{base.__name__} with reparameterized matrices (wesar_hf).'})


def is_gated_hf(model: Any) -> bool:
    return isinstance(model, GatedHFModel)


def build_gated_model(config: PretrainedConfig) -> PreTrainedModel:
    """The gated model for a config carrying ``wesar_hf`` (on the current default device, uninitialized)."""
    return gated_class(stock_class(config))(config)


def from_checkpoint_config(content: dict[str, Any]) -> PretrainedConfig:
    """The HF config (with ``wesar_hf``) of a saved wesar_hf model, from its config.json content."""
    content = copy.deepcopy(content)
    model_type = content.get('model_type')
    check_family(model_type)
    return AutoConfig.for_model(model_type, **{k: v for k, v in content.items() if k not in _NOT_FIELDS})
