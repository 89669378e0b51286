"""The shipped paper YAMLs and MosaicML job files: complete, valid, and what the paper ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from wesar_foundry import paper

ROOT = Path(__file__).resolve().parents[1]
YAMLS = paper.shipped_train_yamls()


def test_committed_yamls_equal_the_generator_output(tmp_path):
    paper.write_all(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*.yaml'))
    assert generated, 'nothing generated'
    for rel in generated:
        assert (ROOT / 'yamls' / rel).read_text() == (tmp_path / rel).read_text(), f'regenerate: python -m wesar_foundry.paper yamls ({rel})'


def test_every_method_ships_in_both_settings_at_every_size():
    for size in ('130m', '1b', '13b'):
        for method in ('small', 'he', 'weight_norm', 'sigma_reparam', 'residual_scaling', 'wesar'):
            for setting in ('rapid', 'stable'):
                assert (ROOT / 'yamls' / 'pretrain' / size / f'{method}-{setting}.yaml').is_file()


@pytest.mark.parametrize('rel', sorted(YAMLS))
def test_shipped_yaml_passes_llmfoundry_validation(rel):
    from llmfoundry.command_utils.train import TRAIN_CONFIG_KEYS, TrainConfig, validate_config
    from llmfoundry.utils.config_utils import make_dataclass_and_log_config
    cfg = OmegaConf.load(ROOT / 'yamls' / rel)
    _, train_cfg = make_dataclass_and_log_config(cfg, TrainConfig, TRAIN_CONFIG_KEYS, transforms='all')
    validate_config(train_cfg)
    assert train_cfg.max_seq_len == 2048 and train_cfg.precision == 'amp_bf16'
    tokens = train_cfg.global_train_batch_size * 2048
    assert tokens in (2 ** 20, 4 * 2 ** 20)
    lr = train_cfg.optimizer['lr']
    assert (tokens, lr, train_cfg.scheduler['t_warmup']) in ((2 ** 20, 1e-3, '100ba'), (4 * 2 ** 20, 5e-4, '2000ba'))
    assert train_cfg.optimizer['weight_decay'] == pytest.approx(0.01 * lr)  # decoupled: wd not × lr
    assert train_cfg.optimizer['betas'] == [0.9, 0.95]
    assert train_cfg.algorithms['gradient_clipping']['clipping_threshold'] == 1.0
    assert train_cfg.optimizer['param_groups'] == [{'param_str_match': r'\.(alpha|g|gamma)$', 'weight_decay': 0.0}]
    mp = train_cfg.fsdp_config['mixed_precision']
    assert isinstance(mp, dict) and mp['buffer_dtype'] == 'fp32'  # RoPE tables stay fp32
    assert train_cfg.model['z_loss'] == 1e-4 and train_cfg.model['vocab_size'] == 32000
    assert train_cfg.eval_loader['dataset']['local'] == './data/wikitext'


def count(size: str, method: str) -> tuple[int, dict]:
    from wesar_foundry.model.composer import WeSaRComposerModel
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / 'yamls' / 'pretrain' / size / f'{method}-rapid.yaml'), resolve=True)
    kwargs = {k: v for k, v in cfg['model'].items() if k != 'name'}
    model = WeSaRComposerModel(**kwargs)
    assert all(p.is_meta for p in model.parameters())  # built without allocating
    return sum(p.numel() for p in model.parameters()), model.model.reparam_modules()


def test_1b_parameter_counts_match_the_paper():
    plain, mats = count('1b', 'small')
    assert plain == 1_339_131_904
    assert len(mats) == 2 + 6 * 24
    assert count('1b', 'wesar')[0] == plain + len(mats)
    assert count('1b', 'sigma_reparam')[0] == plain + len(mats)
    assert count('1b', 'residual_scaling')[0] == plain
    assert count('1b', 'weight_norm')[0] == plain + sum(m.weight.shape[0] for m in mats.values())


@pytest.mark.parametrize('size, approx', [('130m', 134e6), ('1b', 1.34e9), ('13b', 13e9)])
@pytest.mark.parametrize('method', sorted(paper.METHODS))
def test_every_size_and_method_builds_on_meta_at_the_expected_scale(size, approx, method):
    n, _ = count(size, method)  # asserts every parameter is on the meta device
    assert n == pytest.approx(approx, rel=0.05)


def test_13b_gates_are_the_method_docs_values():
    from wesar_foundry.init_targets import target_std
    sigma = 4e-5 ** 0.5
    assert target_std('down', 'he', 5120, 40) / sigma == pytest.approx(0.17469, rel=2e-5)


@pytest.mark.parametrize('path', sorted((ROOT / 'yamls' / 'mcloud').glob('*.yaml')), ids=lambda p: p.name)
def test_mcloud_job_files_parse_with_mcli(path):
    from mcli.models.run_config import FinalRunConfig, RunConfig
    run = RunConfig.from_file(str(path))
    api = FinalRunConfig.finalize_config(run).to_create_run_api_input()  # mcli's own validation, offline
    assert run.image.startswith('mosaicml/llm-foundry:2.7.0') and 'composer train.py' in run.command
    assert [i['git_repo'] for i in run.integrations] == ['mosaicml/llm-foundry', paper.PLUGIN_REPO]
    assert run.parameters['model']['name'] == 'wesar_llama' and api


def test_sweep_covers_the_grid_and_seeds_as_overrides(tmp_path):
    from mcli import RunConfig
    files = paper.write_sweep(tmp_path)
    assert len(files) == 3 * 5 * 5 + 2 * 5
    job = RunConfig.from_file(str(tmp_path / 'wesar-s256e-5-seed19.yaml'))
    args = job.command.split('parameters.yaml ')[1].split()
    merged = OmegaConf.merge(OmegaConf.create(job.parameters), OmegaConf.from_dotlist(args))
    assert merged.seed == 19 and merged.model.init_config.sigma2 == pytest.approx(2.56e-3)
    sigmas = {f.name.split('-s')[1].split('-seed')[0] for f in files if f.name.startswith('weight-norm-s')}
    assert len(sigmas) == 5
