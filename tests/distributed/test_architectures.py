"""Other architectures on the product path: ``wesar_hf`` (GPT-NeoX: fused qkv, biases, LayerNorm,
parallel residual) and llm-foundry's MPT (``wesar_mpt``), their shipped tiny YAMLs trained over two
CPU ranks with FSDP2 FULL_SHARD, activation checkpointing and sharded checkpoints; resumed from a
sharded checkpoint; exported to their own stock model_type."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.distributed.conftest import Run, as_run
from tests.distributed.launch import result, run_train_jobs
from tests.foundry.mpt.helpers import load_in_clean_process
from tests.helpers import HF_YAML_SIZES as SIZES
from tests.helpers import TINY_MODEL
from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.commands.cli import main as cli

pytestmark = pytest.mark.distributed

YAMLS = Path(__file__).resolve().parents[2] / 'yamls' / 'tiny'
STEPS, SAVE_AT, GLOBAL_BATCH = 6, 3, 16
# family → (its tiny YAML, the dotlist shrinking its model to the test size, its export callback)
FAMILIES = {
    'gpt_neox': ('hf_gpt_neox.yaml', [f'model.config_overrides.{k}={v}' for k, v in SIZES.items()], 'wesar_hf_checkpointer'),
    'mpt': ('mpt.yaml', [f'model.{k}={TINY_MODEL[k]}' for k in ('d_model', 'n_layers', 'n_heads', 'vocab_size')],
            'wesar_mpt_hf_checkpointer'),
}


def family_job(family: str, work: Path, data: Path, world_size: int, name: str, *extra: str) -> dict:
    yaml, sizes, exporter = FAMILIES[family]
    cwd = work / name
    overrides = [
        f'variables.data_local={data}', f'variables.max_seq_len={TINY_MODEL["max_seq_len"]}',
        f'variables.run_name={name}-{world_size}rank', f'save_folder={cwd / "checkpoints"}', *sizes,
        # The paper YAMLs' FSDP settings, fp32 parameters for comparisons to 1e-5.
        'precision=fp32', 'fsdp_config={sharding_strategy: FULL_SHARD, mixed_precision: FULL, '
                          'activation_checkpointing: true, state_dict_type: sharded}',
        f'max_duration={STEPS}ba', 'scheduler.t_warmup=2ba', f'global_train_batch_size={GLOBAL_BATCH}',
        f'device_train_microbatch_size={GLOBAL_BATCH // world_size}', 'device_eval_batch_size=8',
        'eval_interval=3ba', 'eval_subset_num_batches=1', f'save_interval={SAVE_AT}ba', 'save_num_checkpoints_to_keep=-1', 'console_log_interval=3ba',
        'callbacks.update_ratio_monitor.interval=2', 'loggers.inmemory={}', 'python_log_level=info',
        f'callbacks.{exporter}.save_folder={cwd / "hf"}', f'callbacks.{exporter}.save_interval={STEPS}ba',
        'callbacks.test_gloo_grad_average={}', *extra,
    ]
    return {'reparam': 'wesar', 'yaml': str(YAMLS / yaml), 'cwd': str(cwd), 'out': str(cwd / 'out'), 'overrides': overrides}


@pytest.fixture(scope='module')
def runs(tiny_data, tmp_path_factory) -> dict[str, dict[str, Run]]:
    """Per family: straight over two ranks, resumed over two ranks from the straight run's step-3
    sharded checkpoint (one launch for all), and straight in one process."""
    work = tmp_path_factory.mktemp('architectures')
    jobs = {}
    for family in FAMILIES:
        jobs[family, 'two'] = family_job(family, work, tiny_data, 2, family)
        jobs[family, 'resumed'] = family_job(family, work, tiny_data, 2, f'{family}-resumed',
                                             f'load_path={work / family / "checkpoints" / f"ep0-ba{SAVE_AT}"}')
    run_train_jobs(list(jobs.values()), work)
    out = {family: {kind: as_run(j, result(j)) for (f, kind), j in jobs.items() if f == family} for family in FAMILIES}

    from llmfoundry.command_utils import train

    from tests.distributed.configs import load
    from tests.distributed.driver import collect
    here = os.getcwd()
    try:
        for family in FAMILIES:
            j = family_job(family, work, tiny_data, 1, f'{family}-one')
            Path(j['cwd']).mkdir(parents=True)
            os.chdir(j['cwd'])
            trainer = train(load('wesar', j['overrides'], j['yaml']))
            out[family]['one'] = as_run(j, collect(trainer))
            trainer.close()
    finally:
        os.chdir(here)
    return out


@pytest.mark.parametrize('family', FAMILIES)
def test_two_ranks_train_sharded_and_checkpointed_with_one_process_losses(runs, family):
    two, one = runs[family]['two'], runs[family]['one']
    assert two.raw['world_size'] == 2
    assert two.raw['sharded_params'] == two.raw['params']  # every parameter a DTensor shard
    assert two.raw['checkpointed_layers'] == TINY_MODEL['n_layers']
    assert len(two.losses) == STEPS
    assert two.losses == pytest.approx(one.losses, rel=1e-5)
    assert {p.name for p in (two.save_folder / f'ep0-ba{SAVE_AT}').iterdir()} >= {'.metadata', '__0_0.distcp', '__1_0.distcp'}


@pytest.mark.parametrize('family', FAMILIES)
def test_a_run_resumed_from_the_sharded_checkpoint_continues_the_straight_run(runs, family):
    straight, resumed = runs[family]['two'], runs[family]['resumed']
    # Keyed by the batch count before the step: steps SAVE_AT+1..STEPS are 3, 4, 5.
    assert sorted(resumed.metrics['loss/train/total']) == list(range(SAVE_AT, STEPS))
    assert resumed.losses == pytest.approx(straight.losses[SAVE_AT:], rel=1e-5)
    torch.testing.assert_close(resumed.logits, straight.logits, rtol=1e-5, atol=1e-5)


def test_the_gpt_neox_sharded_checkpoint_exports_to_stock_gpt_neox_with_the_trained_logits(runs, tmp_path):
    run = runs['gpt_neox']['two']
    assert cli(['export', str(run.save_folder), str(tmp_path / 'command')]) == 0
    dirs = {'command': tmp_path / 'command', 'callback': run.cwd / 'hf' / 'huggingface' / f'ba{STEPS}'}
    loaded = load_with_stock_transformers(dirs, run.input_ids, tmp_path / 'loader', generate=False)
    for name in dirs:
        assert (loaded[name]['class'], loaded[name]['model_type']) == ('GPTNeoXForCausalLM', 'gpt_neox')
        torch.testing.assert_close(loaded[name]['logits'], run.logits, rtol=1e-5, atol=1e-5)


def test_the_mpt_export_written_under_fsdp_loads_as_stock_mpt_with_the_trained_logits(runs, tmp_path):
    run = runs['mpt']['two']
    got = load_in_clean_process(run.cwd / 'hf' / 'huggingface' / f'ba{STEPS}', tmp_path, run.input_ids)
    assert (got['class'], got['model_type']) == ('MPTForCausalLM', 'mpt')
    torch.testing.assert_close(got['logits'], run.logits, rtol=1e-5, atol=1e-5)
