"""Options from YAML mappings: unknown keys refused by name before anything is built, and a
constructor that takes a dataclass's fields shows them as its typed arguments."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field

import pytest

from wesar_foundry.core.options import from_options, takes_options


@dataclass
class Options:
    """A callback's options."""

    name: str
    """Required: no default."""
    interval: int = 10
    """With a default."""
    include: str | None = None
    """Optional."""
    tags: list[str] = field(default_factory=lambda: ['a'])
    """A default from a factory."""


class Built:
    @takes_options(Options, 'callbacks.built')
    def __init__(self, config: Options) -> None:
        self.config = config


def test_from_options_builds_the_dataclass():
    assert from_options(Options, {'name': 'x', 'interval': 3}, 'here') == Options('x', 3)


def test_unknown_keys_are_refused_naming_them_where_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r'^callbacks.x: unknown option\(s\) intervall, z; '
                                         r'allowed: name, interval, include, tags$'):
        from_options(Options, {'name': 'x', 'z': 1, 'intervall': 3}, 'callbacks.x')


def test_a_decorated_constructor_receives_the_built_options():
    assert Built(name='x', include='mlp').config == Options('x', include='mlp')


def test_a_decorated_constructor_refuses_unknown_keys_through_from_options():
    with pytest.raises(ValueError, match=r'callbacks.built: unknown option\(s\) intervall; allowed: name, '):
        Built(name='x', intervall=3)


def test_its_signature_is_the_fields_keyword_only_with_their_types_and_defaults():
    params = inspect.signature(Built).parameters
    assert list(params) == ['name', 'interval', 'include', 'tags']
    assert all(p.kind is p.KEYWORD_ONLY for p in params.values())
    assert params['name'].default is inspect.Parameter.empty  # required, as the dataclass says
    assert (params['interval'].default, params['include'].default, params['tags'].default) == (10, None, ['a'])
    assert typing.get_type_hints(Built.__init__) == {'name': str, 'interval': int, 'include': str | None,
                                                     'tags': list[str], 'return': type(None)}
