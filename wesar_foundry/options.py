"""Typed options from YAML mappings (stdlib only): one way to refuse unknown keys by name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
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
