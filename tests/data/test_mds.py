"""A training run reading a prepared folder: a missing split is named, with the ``prepare`` option
that makes it, before any loader or model is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from wesar_foundry.data import MANIFEST, check_loader_splits, check_split

ROOT = Path(__file__).resolve().parents[2]


def _prepared(tmp_path, val_percent: float, splits: tuple[str, ...]):
    folder = tmp_path / 'prepared'
    for split in splits:
        (folder / split).mkdir(parents=True)
        (folder / split / 'index.json').write_text('{}')
    (folder / MANIFEST).write_text(json.dumps({'config': {'val_percent': val_percent}}))
    return folder


def test_a_present_split_passes(tmp_path):
    folder = _prepared(tmp_path, 5, ('train', 'val'))
    check_split(folder, 'train')
    check_split(folder, 'val')


@pytest.mark.parametrize('val_percent, present, missing, message', [
    (0, 'train', 'val', "split 'val' of {f} has no val/index.json: it was prepared with --val-percent 0 (train only); "
                        'prepare it again with --val-percent > 0'),
    (100, 'val', 'train', "split 'train' of {f} has no train/index.json: it was prepared with --val-percent 100 "
                          '(an eval-only set); prepare it again with --val-percent < 100'),
])
def test_a_split_that_prepare_did_not_write_names_val_percent(tmp_path, val_percent, present, missing, message):
    folder = _prepared(tmp_path, val_percent, (present,))
    with pytest.raises(ValueError) as e:
        check_split(folder, missing)
    assert message.format(f=folder) in str(e.value)


def test_a_folder_that_is_missing_or_not_prepared_names_prepare(tmp_path):
    with pytest.raises(ValueError, match=r'dataset.local=\S+nowhere does not exist and dataset.remote is not set: '
                                         r'set dataset.remote .* or dataset.local .*; in the shipped YAMLs: '
                                         r'variables.data_remote / variables.data_local \(train\), .*; '
                                         r'`wesar-foundry prepare --out \S+nowhere` makes train and val there'):
        check_split(tmp_path / 'nowhere', 'train')
    (tmp_path / 'other').mkdir()
    with pytest.raises(ValueError, match='holds no prepare.json.*--val-percent sets val'):
        check_split(tmp_path / 'other', 'val')


def test_a_remote_folder_is_checked_for_the_split_streaming_will_copy(tmp_path):
    remote = _prepared(tmp_path, 5, ('train',))
    check_split(tmp_path / 'cache', 'train', remote=str(remote))  # the cache need not exist yet
    with pytest.raises(ValueError, match=r'train_loader.dataset.remote=\S+ has no val/index.json: '
                                         r'`wesar-foundry prepare --out'):
        check_split(tmp_path / 'cache', 'val', remote=str(remote), key='train_loader.dataset')


def test_a_placeholder_path_without_a_remote_names_the_keys_to_set(tmp_path):
    cfg = OmegaConf.load(ROOT / 'yamls' / 'pretrain' / '1b' / 'wesar-rapid.yaml')
    with pytest.raises(ValueError, match=r'train_loader: .*train_loader.dataset.local=\./data/refinedweb does not exist '
                                         r'and train_loader.dataset.remote is not set: .*variables.data_remote or '
                                         r'variables.data_local'):
        check_loader_splits(OmegaConf.to_container(cfg, resolve=True))
    with pytest.raises(ValueError, match=r'eval_loader.dataset has neither local nor remote: .*eval_loader.dataset.remote'
                                         r'.*variables.eval_data_remote or variables.eval_data_local'):
        check_loader_splits({'eval_loader': {'name': 'text', 'dataset': {'split': 'val'}}})


def test_the_paper_yamls_loaders_are_checked_by_name(tmp_path):
    train = _prepared(tmp_path / 'rw', 0, ('train',))
    wiki = _prepared(tmp_path / 'wiki', 100, ('val',))
    cfg = OmegaConf.load(ROOT / 'yamls' / 'pretrain' / '1b' / 'wesar-rapid.yaml')
    cfg.variables.data_local, cfg.variables.eval_data_local = str(train), str(wiki)
    check_loader_splits(OmegaConf.to_container(cfg, resolve=True))
    cfg.variables.eval_data_local = str(train)  # the eval loader pointed at a train-only folder
    with pytest.raises(ValueError, match="eval_loader: split 'val' of .* --val-percent 0 \\(train only\\)"):
        check_loader_splits(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize('key', ['eval_loader', 'eval_loaders'])
def test_streams_and_lists_of_eval_loaders_are_checked(tmp_path, key):
    train = _prepared(tmp_path / 'rw', 0, ('train',))
    cfg = {'train_loader': {'name': 'text', 'dataset': {'split': 'train', 'streams': {'a': {'local': str(train)}}}},
           key: [{'name': 'text', 'label': 'x', 'dataset': {'local': str(train), 'split': 'train'}},
                 {'name': 'text', 'label': 'y', 'dataset': {'local': str(train), 'split': 'val'}}]}
    with pytest.raises(ValueError, match=rf"{key}\[1\]: split 'val'"):
        check_loader_splits(cfg)
    cfg['train_loader']['dataset']['split'] = 'val'
    with pytest.raises(ValueError, match=r"train_loader: split 'val'"):
        check_loader_splits(cfg)
