"""``wesar_mpt`` as llm-foundry builds it: registered, trained through ``train()``, resumed, built on meta."""

from __future__ import annotations

import json
import math

import pytest
import torch
from llmfoundry.command_utils import train
from omegaconf import OmegaConf

from tests.foundry.callbacks.helpers import logged
from tests.foundry.mpt.helpers import MPT_YAML, TINY_MPT, build
from wesar_foundry.foundry.callbacks.checkpointer import WeSaRMPTHuggingFaceCheckpointer
from wesar_foundry.foundry.mpt.composer import WeSaRMPTComposerModel


def test_the_model_and_checkpointer_resolve_through_llmfoundry_registries():
    from llmfoundry.registry import callbacks, models
    assert models.get('wesar_mpt') is WeSaRMPTComposerModel
    assert callbacks.get('wesar_mpt_hf_checkpointer') is WeSaRMPTHuggingFaceCheckpointer


@pytest.mark.slow
def test_training_resumed_from_a_checkpoint_continues_the_uninterrupted_run(run):
    straight, resumed = (logged(run[k], 'loss/train/total') for k in ('straight', 'resumed'))
    # Keyed by the batch count before each step: the resumed run takes steps 4 and 5 only.
    assert sorted(straight) == [0, 1, 2, 3, 4] and all(math.isfinite(v) for v in straight.values())
    assert sorted(resumed) == [3, 4]
    assert [resumed[s] for s in (3, 4)] == pytest.approx([straight[s] for s in (3, 4)], rel=1e-5)


def test_an_unknown_model_key_is_refused_by_name():
    with pytest.raises(ValueError, match=r'unknown option\(s\) n_layer\b.*allowed: .*reparam'):
        build(n_layer=3)


@pytest.mark.slow
def test_the_shipped_tiny_mpt_yaml_trains_with_its_monitors_and_exports(tiny_data, tmp_path):
    cfg = OmegaConf.load(MPT_YAML)
    cfg.variables.data_local = str(tiny_data)
    cfg.variables.max_seq_len = TINY_MPT['max_seq_len']
    cfg.model.update(TINY_MPT)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([
        'max_duration=2ba', 'eval_interval=2ba', 'eval_subset_num_batches=1', 'global_train_batch_size=8',
        'device_train_batch_size=8', 'device_train_microbatch_size=8', 'device_eval_batch_size=8',
        'callbacks.update_ratio_monitor.interval=1']))
    train(cfg)  # cwd is tmp_path: the YAML's outputs land in runs/tiny-mpt/ there
    run = tmp_path / 'runs' / 'tiny-mpt'
    assert (run / 'huggingface' / 'ba2' / 'model.safetensors').is_file()
    assert (run / 'checkpoints' / 'latest-rank0.pt').resolve() == run / 'checkpoints' / 'ep0-ba2-rank0.pt'
    lines = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    assert any(any(k.startswith('update_ratio/') for k in line) for line in lines)


def test_a_meta_built_model_initialized_module_by_module_matches_a_cpu_built_one():
    """What Composer's FSDP does with init_device: meta (to_empty, then param_init_fn per module),
    including the bias, llm-foundry's own RMSNorm and the RoPE tables."""
    options = {'no_bias': False, 'norm_type': 'low_precision_rmsnorm'}
    cpu, meta = build(**options).model, build(init_device='meta', **options).model
    params = list(meta.parameters())
    assert params and all(p.is_meta for p in params)
    meta.to_empty(device='cpu')
    for module in meta.modules():
        meta.param_init_fn(module)
    pairs = list(zip(cpu.state_dict().items(), meta.state_dict().items()))
    assert pairs and cpu.state_dict().keys() == meta.state_dict().keys()
    for (name, want), (_, got) in pairs:
        if name.endswith('.weight') and got.dim() == 2:  # a fresh draw: same std, other values
            assert got.std().item() == pytest.approx(want.std().item(), rel=0.1), name
        else:  # gates, biases, norm weights
            assert torch.equal(got, want), name
    torch.testing.assert_close(meta.transformer.rotary_embedding.inv_freq, cpu.transformer.rotary_embedding.inv_freq)

