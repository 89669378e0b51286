"""The Composer wrappers llm-foundry builds: ``WeSaRLlamaComposerModel`` for ``name: wesar_llama``,
``WeSaRHFComposerModel`` for ``name: wesar_hf`` (any supported HF family); both, and ``wesar_mpt``'s
``WeSaRMPTComposerModel`` (``foundry/mpt/composer.py``), are a ``ReparamComposerModel``.

Loss = cross-entropy + z_loss · mean(logsumexp(logits)²), both means over non-ignored tokens;
Composer backpropagates ``total`` and logs ``loss/train/ce`` and ``loss/train/z_loss`` apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import HuggingFaceModel
from transformers import PreTrainedTokenizerBase
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from wesar_foundry.foundry.fsdp_check import check_fsdp_version
from wesar_foundry.foundry.log_level import follow_llmfoundry
from wesar_foundry.models.hf import WeSaRHFOptions, build_hf_config, gated_class, stock_class
from wesar_foundry.models.llama import WeSaRLlamaForCausalLM
from wesar_foundry.models.llama_config import WeSaRLlamaOptions
from wesar_foundry.models.reparam_options import ReparamOptions
from wesar_foundry.reparam import PlainMatrix, ReparamMatrix
from wesar_foundry._moved import renamed

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
INIT_DEVICES = ('cpu', 'meta', 'mixed')


def resolve_init_fn(name: str):
    """The init function registered under ``name`` in llm-foundry's ``param_init_fns``."""
    from llmfoundry.registry import param_init_fns
    return param_init_fns.get(name)


def eval_metrics() -> list:
    """Cross-entropy and perplexity, plus llm-foundry's in-context-learning metrics.

    Composer runs an ``icl_tasks`` evaluator only on the model's metrics that its ``metric_names``
    name, and silently skips an evaluator that names none; llm-foundry's ``train()`` keeps the ICL
    metrics off the plain eval loader itself.
    """
    from llmfoundry.eval.metrics import (
        InContextLearningLMAccuracy, InContextLearningLMExpectedCalibrationError,
        InContextLearningMCExpectedCalibrationError, InContextLearningMultipleChoiceAccuracy,
    )
    return [LanguageCrossEntropy(ignore_index=IGNORE_INDEX), LanguagePerplexity(ignore_index=IGNORE_INDEX),
            InContextLearningLMAccuracy(), InContextLearningLMExpectedCalibrationError(),
            InContextLearningMCExpectedCalibrationError(), InContextLearningMultipleChoiceAccuracy()]


def lm_losses(logits: torch.Tensor, labels: torch.Tensor, z_loss: float) -> dict[str, torch.Tensor]:
    """Next-token CE and z-loss over non-ignored positions (labels are unshifted)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    if not keep.any():
        # A microbatch with no target (all padding): a zero loss on the graph, not the NaN of a mean
        # over nothing; Composer weighs it by its zero loss-generating tokens anyway.
        zero = logits.sum() * 0.0
        return {'total': zero, 'ce': zero, 'z_loss': zero}
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    z = torch.logsumexp(logits, dim=-1)[keep].pow(2).mean()
    return {'total': ce + z_loss * z, 'ce': ce, 'z_loss': z}


def resolve_init_device(init_device: str) -> str:
    """``cpu`` or ``meta``: ``mixed`` is cpu on global rank 0 and meta elsewhere."""
    if init_device not in INIT_DEVICES:
        raise ValueError(f'model.init_device={init_device!r}; allowed: {", ".join(INIT_DEVICES)}')
    if init_device == 'mixed':
        from composer.utils import dist
        return 'cpu' if dist.get_global_rank() == 0 else 'meta'
    return init_device


def attach_init_and_fsdp_hooks(model: torch.nn.Module, init_fn, *, n_layers: int, d_model: int, init_kwargs: dict,
                               is_block: Callable[[torch.nn.Module], bool], init_device: str) -> None:
    """Give ``model`` Composer's FSDP hooks and, unless it is on meta, initialize it now.

    ``param_init_fn`` initializes one module (what it owns directly): Composer's FSDP
    materializes a meta model one module at a time and calls it. Decoder blocks (``is_block``)
    are the FSDP and activation-checkpointing units.
    """
    def param_init_fn(module: torch.nn.Module) -> None:
        init_fn(module=module, n_layers=n_layers, d_model=d_model, **init_kwargs)

    model.param_init_fn = param_init_fn
    model.fsdp_wrap_fn = is_block
    model.activation_checkpointing_fn = is_block
    if init_device != 'meta':
        model.apply(param_init_fn)


def describe_init(options: ReparamOptions, model: torch.nn.Module, d_model: int) -> str:
    """The log line of a model's init: its reparameterization, target, and the σ its stored weights use."""
    what = f'reparam {options.reparam}, {options.init_target} target'
    if all(isinstance(m, PlainMatrix) for m in model.modules() if isinstance(m, ReparamMatrix)):
        # none / residual_scaling: each matrix is drawn at its target's std (over its constant).
        return f'{what}: every matrix drawn at its target std (init_config.sigma2 is not used)'
    return f'{what}; {options.sigma_choice_at(d_model).describe()}'


class ReparamComposerModel(HuggingFaceModel):
    """The Composer wrapper of a causal LM with reparameterized matrices: loss with z-loss, LM
    metrics, FLOPs. Subclasses read their options, build the HF model and call this ``__init__``."""

    # The keys of ``loss()``: Composer logs each as ``loss/train/<key>``.
    loss_names = ('total', 'ce', 'z_loss')
    # The ``models`` registry name, for errors.
    registry_name = 'wesar'

    def __init__(self, model, tokenizer, options: ReparamOptions, *, n_layers: int, d_model: int):
        metrics = lambda: [LanguageCrossEntropy(ignore_index=IGNORE_INDEX), LanguagePerplexity(ignore_index=IGNORE_INDEX)]  # noqa: E731
        super().__init__(
            model=model, tokenizer=tokenizer, use_logits=True, shift_labels=True,
            metrics=metrics() if options.use_train_metrics else [], eval_metrics=eval_metrics(),
        )
        # The model: keys as validated (a WeSaRLlamaOptions, WeSaRHFOptions or WeSaRMPTOptions).
        self.options = options
        self.z_loss = float(options.z_loss)
        # σ and the gates' constant as chosen (sigma2: auto derives them from the lr): logged here and
        # as hyperparameters by gate_health_monitor; saved in the HF config and as gate_scale buffers.
        self.sigma_choice = options.sigma_choice_at(d_model)
        follow_llmfoundry()  # else this line is dropped whatever the YAML's python_log_level
        log.info('wesar-foundry %s: %s', type(self).__name__, describe_init(options, model, d_model))
        self._n_layers, self._d_model = n_layers, d_model
        # Counted once: speed_monitor asks for FLOPs every batch. The embedding is a lookup.
        lookups = {id(p) for m in model.modules() if isinstance(m, ReparamMatrix) and m.kind == 'embedding'
                   for p in m.parameters()}
        self._matmul_params = sum(p.numel() for p in model.parameters() if id(p) not in lookups)

    @property
    def logger(self):
        return self.__dict__.get('logger')

    @logger.setter
    def logger(self, value) -> None:
        # The Trainer hands over its Logger (which holds its State) after choosing FSDP1 or FSDP2 and
        # before wrapping: the one moment we can refuse FSDP1 in time (see fsdp_check). Stored under
        # 'logger' in __dict__, which ComposerModel's __deepcopy__ shares instead of copying.
        state = getattr(value, '_state', None)
        if state is not None and value is not self.__dict__.get('logger'):
            check_fsdp_version(state, self.registry_name)
        self.__dict__['logger'] = value

    def forward(self, batch: Mapping) -> torch.Tensor:
        # Labels stay out of the HF forward, so it computes no loss of its own.
        return self.model(input_ids=batch['input_ids'], attention_mask=batch.get('attention_mask'),
                          use_cache=False).logits

    def loss(self, outputs: torch.Tensor, batch: Mapping) -> dict[str, torch.Tensor]:
        return lm_losses(outputs, batch['labels'], self.z_loss)

    def eval_forward(self, batch, outputs=None):
        # HuggingFaceModel.eval_forward expects HF outputs; ours are logits already.
        # Shifted copy for the metrics; the batch itself is left untouched.
        labels = batch['labels']
        self.labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)
        return outputs if outputs is not None else self.forward(batch)

    def flops_per_batch(self, batch: Mapping) -> int:
        # 6·N·tokens for the matmuls plus attention: what MFU callbacks need.
        bs, seq = batch['input_ids'].shape[:2]
        attn = 12 * self._n_layers * self._d_model * seq  # fwd+bwd QK^T and AV
        return (6 * self._matmul_params + attn) * bs * seq


class WeSaRLlamaComposerModel(ReparamComposerModel):
    """A Composer model around ``WeSaRLlamaForCausalLM``; every ``model:`` YAML key but
    ``name``/``init_device`` is a ``WeSaRLlamaOptions`` field."""

    registry_name = 'wesar_llama'

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None = None, init_device: str = 'cpu', **model_kwargs: Any):
        options = WeSaRLlamaOptions.from_kwargs(model_kwargs)
        init_device = resolve_init_device(init_device)
        if tokenizer is not None and len(tokenizer) > options.vocab_size:
            raise ValueError(
                f'model.vocab_size={options.vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens); '
                f'set model.vocab_size >= {len(tokenizer)}')
        init_fn = resolve_init_fn(options.init_name)

        with torch.device('meta') if init_device == 'meta' else torch.device('cpu'):
            model = WeSaRLlamaForCausalLM(options.to_hf_config())
        attach_init_and_fsdp_hooks(
            model, init_fn, n_layers=options.n_layers, d_model=options.d_model,
            init_kwargs={k: v for k, v in options.init_config.items() if k != 'name'},
            is_block=lambda m: isinstance(m, LlamaDecoderLayer), init_device=init_device)
        super().__init__(model, tokenizer, options, n_layers=options.n_layers, d_model=options.d_model)


class WeSaRHFComposerModel(ReparamComposerModel):
    """A Composer model around a stock HF causal decoder with reparameterized matrices
    (``wesar_foundry.models.hf``); every ``model:`` YAML key but ``name``/``init_device`` is a
    ``WeSaRHFOptions`` field."""

    registry_name = 'wesar_hf'

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None = None, init_device: str = 'cpu', **model_kwargs: Any):
        options = WeSaRHFOptions.from_kwargs(model_kwargs)
        init_device = resolve_init_device(init_device)
        config = build_hf_config(options, tokenizer)
        init_fn = resolve_init_fn(options.init_name)

        # The class first: transformers imports its module lazily, which fails under the meta device.
        cls = gated_class(stock_class(config))
        with torch.device('meta') if init_device == 'meta' else torch.device('cpu'):
            model = cls(config)
        # The decoder blocks transformers itself never splits (LlamaDecoderLayer, GPTNeoXLayer, ...).
        blocks = tuple(model._no_split_modules or ())
        n_layers, d_model = config.num_hidden_layers, config.hidden_size
        attach_init_and_fsdp_hooks(
            model, init_fn, n_layers=n_layers, d_model=d_model,
            init_kwargs={k: v for k, v in options.init_config.items() if k != 'name'},
            is_block=lambda m: type(m).__name__ in blocks, init_device=init_device)
        super().__init__(model, tokenizer, options, n_layers=n_layers, d_model=d_model)


# 0.1's name, for one release.
__getattr__ = renamed(__name__, {'WeSaRComposerModel': 'WeSaRLlamaComposerModel'}, globals())
