"""Typed values from untyped input: dataclasses built strictly from dicts (YAML recipes, checkpoint metadata, kwargs).

A core module: it imports only :mod:`mnv2.errors` and the standard library, so every layer (models, data, engine,
weights) can use it without import cycles.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from mnv2.errors import ConfigError

T = TypeVar("T")


def strict_from_dict(cls: type[T], values: Any, source: str) -> T:
    """Build the dataclass ``cls`` from the dict ``values``, refusing anything it cannot take.

    Args:
        cls: a dataclass type; its fields are the accepted keys.
        values: the keyword arguments, normally parsed from YAML/JSON or passed as ``**kwargs``.
        source: where ``values`` came from (``"model config"``, ``"recipe 'paper'"``, a file path), named in every
            error so the user knows which input to fix.

    Returns:
        ``cls(**values)``.

    Raises:
        ConfigError: ``values`` is not a dict; it has keys that are not fields of ``cls`` (the message names them
            and lists the known ones); or ``cls`` raised ``TypeError`` (e.g. a required field is missing). Errors
            from ``cls``'s own validation (``__post_init__``) propagate unchanged.
    """
    if not isinstance(values, dict):
        # a YAML/JSON section written as a scalar or list would otherwise fail as an obscure TypeError on ``**``
        raise ConfigError(f"{source} must be a mapping of field names to values, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    # a silently ignored key is a silently ignored setting: a typo must fail loudly, not train the wrong model
    unknown = sorted(str(k) for k in set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except TypeError as e:  # e.g. a required field missing; a user-input error, not a bug
        raise ConfigError(f"{source}: {e}") from e
