"""``WeSaRComposerModel``: the Composer wrapper llm-foundry builds for ``name: wesar_llama``.

Loss = cross-entropy + z_loss · mean(logsumexp(logits)²), both means over non-ignored tokens;
Composer backpropagates ``total`` and logs ``loss/train/ce`` and ``loss/train/z_loss`` apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import HuggingFaceModel
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from wesar_foundry.model.config import WeSaRModelConfig
from wesar_foundry.model.modeling import WeSaRLlamaForCausalLM

IGNORE_INDEX = -100
INIT_DEVICES = ('cpu', 'meta', 'mixed')


def resolve_init_fn(name: str):
    """The init function registered under ``name`` in llm-foundry's ``param_init_fns``."""
    from llmfoundry.registry import param_init_fns
    return param_init_fns.get(name)


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


class WeSaRComposerModel(HuggingFaceModel):
    """A Composer model around ``WeSaRLlamaForCausalLM``; every ``model:`` YAML key but
    ``name``/``init_device`` is a ``WeSaRModelConfig`` field."""

    # The keys of ``loss()``: Composer logs each as ``loss/train/<key>``.
    loss_names = ('total', 'ce', 'z_loss')

    def __init__(self, tokenizer=None, init_device: str = 'cpu', **model_kwargs: Any):
        cfg = WeSaRModelConfig.from_kwargs(model_kwargs)
        if init_device not in INIT_DEVICES:
            raise ValueError(f'model.init_device={init_device!r}; allowed: {", ".join(INIT_DEVICES)}')
        if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
            raise ValueError(
                f'model.vocab_size={cfg.vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens); '
                f'set model.vocab_size >= {len(tokenizer)}')
        init_fn = resolve_init_fn(cfg.init_name)
        self.wesar_config = cfg

        hf_config = cfg.to_hf_config()
        if init_device == 'mixed':
            from composer.utils import dist
            init_device = 'cpu' if dist.get_global_rank() == 0 else 'meta'
        with torch.device('meta') if init_device == 'meta' else torch.device('cpu'):
            model = WeSaRLlamaForCausalLM(hf_config)
        init_kwargs = {k: v for k, v in cfg.init_config.items() if k != 'name'}

        def param_init_fn(module: torch.nn.Module) -> None:
            init_fn(module=module, n_layers=cfg.n_layers, d_model=cfg.d_model, **init_kwargs)

        # Composer's FSDP materializes a meta model one module at a time and calls this.
        model.param_init_fn = param_init_fn
        model.fsdp_wrap_fn = lambda m: isinstance(m, LlamaDecoderLayer)
        model.activation_checkpointing_fn = lambda m: isinstance(m, LlamaDecoderLayer)
        if init_device != 'meta':
            model.apply(param_init_fn)

        metrics = lambda: [LanguageCrossEntropy(ignore_index=IGNORE_INDEX), LanguagePerplexity(ignore_index=IGNORE_INDEX)]  # noqa: E731
        super().__init__(
            model=model, tokenizer=tokenizer, use_logits=True, shift_labels=True,
            metrics=metrics() if cfg.use_train_metrics else [], eval_metrics=metrics(),
        )
        self.z_loss = float(cfg.z_loss)
        # Counted once: speed_monitor asks for FLOPs every batch. The embedding is a lookup.
        self._matmul_params = sum(p.numel() for n, p in model.named_parameters() if 'embed_tokens' not in n)

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
        attn = 12 * self.wesar_config.n_layers * self.wesar_config.d_model * seq  # fwd+bwd QK^T and AV
        return (6 * self._matmul_params + attn) * bs * seq
