"""Typed options from YAML mappings (stdlib only): one way to refuse unknown keys by name."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from typing import Any, TypeVar

T = TypeVar('T')


def from_options(cls: type[T], options: Mapping[str, Any], where: str) -> T:
    """``cls(**options)`` for a dataclass, after refusing keys it does not have.

    llm-foundry passes every key under a model or callback through unchecked, so a typo would
    otherwise surface as a TypeError far from the YAML line (or not at all).
    """
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f'{where}: unknown option(s) {", ".join(unknown)}; allowed: {", ".join(allowed)}')
    return cls(**options)


def takes_options(cls: type[T], where: str) -> Callable[[Callable[[Any, T], None]], Callable[..., None]]:
    """Decorates ``__init__(self, config: cls)`` so that callers pass ``cls``'s fields as keywords.

    The wrapper builds ``config`` with ``from_options`` (unknown keys refused by name) and shows
    those fields, with their types and defaults, as its own signature: llm-foundry's registry,
    ``inspect.signature`` and ``typing.get_type_hints`` see one typed argument per YAML key, as for
    a stock callback, while each key is still declared once, in ``cls``.
    """
    hints = typing.get_type_hints(cls)
    options = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                 default=(f.default if f.default is not MISSING
                                          else f.default_factory() if f.default_factory is not MISSING
                                          else inspect.Parameter.empty))
               for f in fields(cls)]

    def decorate(init: Callable[[Any, T], None]) -> Callable[..., None]:
        @functools.wraps(init)
        def wrapper(self: Any, **kwargs: Any) -> None:
            init(self, from_options(cls, kwargs, where))

        self_param = next(iter(inspect.signature(init).parameters.values()))
        wrapper.__signature__ = inspect.Signature([self_param, *options], return_annotation=None)
        wrapper.__annotations__ = {**{p.name: p.annotation for p in options}, 'return': None}
        del wrapper.__wrapped__  # the signature is the wrapper's, not init's
        return wrapper

    return decorate
