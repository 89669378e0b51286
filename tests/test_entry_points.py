"""Every entry point the installed package registers is an llm-foundry registry entry like the
stock ones: it resolves by its YAML name, a callback is built by ``build_callback`` from its
required arguments alone, and every argument has a type hint as precise as the stock entries'."""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import subprocess
import sys
import typing
from typing import Any, Union

import pytest
from composer.core import Callback
from llmfoundry import registry
from llmfoundry.utils.builders import build_callback
from llmfoundry.utils.config_utils import TRAIN_CONFIG_KEYS, TrainConfig, make_dataclass_and_log_config

GROUP = 'llmfoundry_'
# From the installed distribution's metadata, so that a new entry point cannot escape these tests.
ENTRY_POINTS = sorted((ep for ep in importlib.metadata.distribution('wesar-foundry').entry_points
                       if ep.group.startswith(GROUP)), key=lambda ep: (ep.group, ep.name))
CALLBACKS = [ep for ep in ENTRY_POINTS if ep.group in ('llmfoundry_callbacks', 'llmfoundry_callbacks_with_config')]

# A required argument's value, as a YAML gives it (add one here when a callback requires a new argument).
REQUIRED = {'save_folder': 'checkpoints', 'save_interval': '1000ba'}

# Where a bare ``Any`` is as precise as the stock entries: (registry, kind of argument) → the
# stock entry that takes the same kind of argument so, and what that argument holds.
STOCK_ANY = {
    ('param_init_fns', inspect.Parameter.VAR_KEYWORD):
        ('kaiming_normal_', 'the init_config keys the function does not use: llm-foundry passes it all of them'),
    ('models', inspect.Parameter.VAR_KEYWORD):
        ('mpt_causal_lm', "the model's other YAML keys, each any YAML value (stock: dict[str, Any] per key)"),
}


def _id(ep: importlib.metadata.EntryPoint) -> str:
    return f'{ep.group[len(GROUP):]}:{ep.name}'


def _registry(ep: importlib.metadata.EntryPoint):
    return getattr(registry, ep.group[len(GROUP):])


def _hints(obj: Any) -> tuple[list[inspect.Parameter], dict[str, Any]]:
    """The arguments of a registered class's constructor or function, and their resolved hints."""
    params = list(inspect.signature(obj).parameters.values())
    return params, typing.get_type_hints(obj.__init__ if isinstance(obj, type) else obj)


def _is_bare_any(hint: Any) -> bool:
    return hint is Any or (typing.get_origin(hint) is Union and Any in typing.get_args(hint))


def test_the_package_registers_models_init_functions_callbacks_and_a_logger():
    groups = {ep.group[len(GROUP):] for ep in ENTRY_POINTS}
    assert groups == {'models', 'param_init_fns', 'callbacks', 'callbacks_with_config', 'loggers'}
    assert CALLBACKS


@pytest.mark.parametrize('ep', ENTRY_POINTS, ids=_id)
def test_each_name_resolves_through_llmfoundry_registry_to_its_entry_point(ep):
    assert _registry(ep).get(ep.name) is ep.load()


@pytest.fixture
def logged_cfg(train_cfg) -> dict[str, Any]:
    """The tiny run's config as llm-foundry's ``train()`` hands it to callbacks_with_config."""
    logged, _ = make_dataclass_and_log_config(train_cfg(), TrainConfig, TRAIN_CONFIG_KEYS, transforms='all')
    return logged


@pytest.mark.parametrize('ep', CALLBACKS, ids=_id)
def test_each_callback_is_built_by_build_callback_from_its_required_arguments_alone(ep, logged_cfg):
    cls = ep.load()
    with_config = ep.group == 'llmfoundry_callbacks_with_config'
    required = [p.name for p in inspect.signature(cls).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and not (with_config and p.name == 'train_config')]  # build_callback passes it
    missing = [n for n in required if n not in REQUIRED]
    assert not missing, f'{ep.name} requires {missing}: give an example value in REQUIRED'
    built = build_callback(ep.name, {n: REQUIRED[n] for n in required}, train_config=logged_cfg)
    assert isinstance(built, cls) and isinstance(built, Callback)


@pytest.mark.parametrize('ep', ENTRY_POINTS, ids=_id)
def test_every_argument_has_a_resolvable_precise_type_hint(ep):
    params, hints = _hints(ep.load())  # get_type_hints raises when a hint does not resolve
    assert params, f'{ep.name} takes no arguments'
    for p in params:
        assert p.name in hints, f'{ep.name}: argument {p.name} has no type hint'
        if not _is_bare_any(hints[p.name]):
            continue
        stock = STOCK_ANY.get((ep.group[len(GROUP):], p.kind))
        assert stock is not None, f'{ep.name}: argument {p.name} is typed Any; no stock entry types it so'
        # The stock entry does take such an argument, typed with Any.
        stock_params, stock_hints = _hints(_registry(ep).get(stock[0]))
        assert any(q.kind == p.kind and 'Any' in str(stock_hints.get(q.name)) for q in stock_params), stock


@pytest.mark.slow  # a fresh interpreter importing llm-foundry
def test_llmfoundry_cli_finds_the_model():
    out = subprocess.run([sys.executable, '-m', 'llmfoundry.cli.cli', 'registry', 'find', 'models', 'wesar_llama'],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, 'COLUMNS': '400'})  # rich truncates to the terminal width
    assert out.returncode == 0, out.stderr
    assert 'wesar_foundry.foundry.composer_models' in out.stdout
