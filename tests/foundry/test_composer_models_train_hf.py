"""``name: wesar_hf`` through llm-foundry's own ``train()``, one shipped tiny YAML per family:
train → Composer checkpoint → resume → export (callback and command) → plain transformers in a
clean process → the trained model's logits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from llmfoundry.command_utils import train
from omegaconf import OmegaConf

from tests.helpers import HF_YAML_SIZES, batch, losses, without_saving
from tests.stock_llama import load_with_stock_transformers
from wesar_foundry.commands.cli import main as cli
from wesar_foundry.models.hf import stock_class

# Every test here reads one module-wide set of training runs.
pytestmark = pytest.mark.slow

YAMLS = Path(__file__).resolve().parents[2] / 'yamls' / 'tiny'
FAMILIES = ('llama', 'mistral', 'qwen2', 'qwen3', 'gpt_neox', 'phi3')
# The shipped YAMLs shrunk to the test size (the family-specific keys, e.g. qwen3's head_dim, stay).
SHRINK = {'num_key_value_heads': 1, 'head_dim': 16}
INPUT_IDS = batch(seq=24, seed=5)['input_ids']


def family_cfg(family: str, data: Path, run: str, *overrides: str, callbacks: dict | None = None):
    cfg = without_saving(OmegaConf.load(YAMLS / f'hf_{family}.yaml'))
    cfg.variables.data_local = str(data)
    cfg.variables.max_seq_len = 32
    sizes = cfg.model.config_overrides
    sizes.update({**HF_YAML_SIZES, **{k: v for k, v in SHRINK.items() if k in sizes}})
    cfg.callbacks, cfg.loggers = callbacks or {}, {'inmemory': {}}
    base = ['eval_interval=100ba', 'eval_subset_num_batches=1', 'global_train_batch_size=8', 'device_train_batch_size=8',
            'device_train_microbatch_size=8', 'device_eval_batch_size=8', 'console_log_interval=100ba',
            'scheduler.t_warmup=2ba', 'optimizer.lr=3e-3', f'run_name={run}']
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(base + list(overrides)))


@pytest.fixture(scope='module')
def runs(tiny_data, tmp_path_factory):
    """Per family: 4 batches straight (Composer checkpoints at ba3 and ba4, update ratios measured), then a resume from ba3
    for the 4th batch with ``wesar_hf_checkpointer``; the ba4 checkpoint exported by the command.
    One loader subprocess for every family's two exports. A family that fails keeps its error."""
    root = tmp_path_factory.mktemp('hf-runs')
    out, dirs = {}, {}
    for family in FAMILIES:
        folder = root / family
        try:
            ck = folder / 'ck'
            straight = train(family_cfg(family, tiny_data, f'{family}-a', 'max_duration=4ba', f'save_folder={ck}',
                                        'save_interval=3ba', callbacks={'update_ratio_monitor': {'interval': 2}}))
            callback = {'wesar_hf_checkpointer': {'save_folder': str(folder / 'hf'), 'save_interval': '4ba'}}
            resumed = train(family_cfg(family, tiny_data, f'{family}-b', 'max_duration=4ba',
                                       f'load_path={ck / "ep0-ba3-rank0.pt"}', callbacks=callback))
            logits = {}
            for name, trainer in (('straight', straight), ('resumed', resumed)):
                with torch.no_grad():
                    logits[name] = trainer.state.model.model.eval()(input_ids=INPUT_IDS).logits
            assert cli(['export', str(ck / 'ep0-ba4-rank0.pt'), str(folder / 'exported')]) == 0
            logged = next(d for d in straight.logger.destinations if type(d).__name__ == 'InMemoryLogger').data
            out[family] = {'straight': losses(straight), 'resumed': losses(resumed), 'logits': logits,
                           'model': resumed.state.model.model, 'logged': set(logged)}
            dirs[f'{family}/callback'] = folder / 'hf' / 'huggingface' / 'ba4'
            dirs[f'{family}/command'] = folder / 'exported'
        except Exception as e:  # reported by this family's test, not by all of them
            out[family] = e
    loaded = load_with_stock_transformers(dirs, INPUT_IDS, root / 'loader', generate=False) if dirs else {}
    return {'runs': out, 'loaded': loaded}


@pytest.mark.parametrize('family', FAMILIES)
def test_trains_resumes_and_exports_to_its_own_model_type_with_the_same_logits(runs, family):
    run = runs['runs'][family]
    if isinstance(run, Exception):
        raise run
    straight, resumed = run['straight'], run['resumed']
    assert len(straight) == 4 and all(math.isfinite(x) for x in straight)
    assert resumed == pytest.approx(straight[3:], rel=1e-5)  # the checkpoint restored everything
    # the update-ratio monitor measured the gated matrices, per role (fused roles included)
    roles = {m.role for m in run['model'].reparam_modules().values()}
    assert roles
    assert {f'update_ratio/effective/role/{r}' for r in roles} <= run['logged']
    cls = stock_class(run['model'].config).__name__
    assert type(run['model']).__name__ == f'Gated{cls}'
    for how, want in (('callback', run['logits']['resumed']), ('command', run['logits']['straight'])):
        got = runs['loaded'][f'{family}/{how}']
        assert (got['class'], got['model_type']) == (cls, family)
        torch.testing.assert_close(got['logits'], want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
