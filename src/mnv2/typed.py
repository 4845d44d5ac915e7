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


def option(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple | None = None,
    low: float | None = None,
    above: float | None = None,
    high: float | None = None,
    unit: str | None = None,
    scale: float | None = None,
    flag: str | None = None,
    invert: bool = False,
    kind: str | None = None,
    metavar: str | None = None,
    resume: bool = False,
    default_factory: Any = None,
) -> Any:
    """A dataclass field that is also a command-line flag: ``mnv2.cli`` derives a verb's flags from its typed config
    (``TrainConfig``, ``ExportOptions``, ``ServeSettings``, the quantize and bench configs), so a flag's name, type,
    range, unit and help live once, beside the value they set.

    Args:
        help: the flag's help text (a field without help is no flag).
        choices: the accepted values.
        low / above / high: the accepted range: ``>= low``, ``> above``, ``<= high`` (finite numbers only).
        unit: the unit the flag is written in (``"MiB"``); with ``scale``, the field holds ``flag value * scale``
            (``--max-body-mb 10`` → ``max_body_bytes = 10 * 2**20``).
        flag: the flag's name when it is not ``--field-name`` (``--no-fold-bn`` for ``fold_bn``).
        invert: a bool flag that sets the field to ``False`` (``--static-batch`` → ``dynamic_batch=False``).
        kind: a parser other than the field's type: ``"size"`` (``N`` or ``WIDTHxHEIGHT``), ``"list"`` (several
            values).
        resume: ``mnv2 train --resume`` may change it.
    """
    meta = {"help": help, "choices": choices, "low": low, "above": above, "high": high, "unit": unit, "scale": scale,
            "flag": flag, "invert": invert, "kind": kind, "metavar": metavar, "resume": resume}  # fmt: skip
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of the dataclass ``cls`` made with :func:`option` (its command-line flags), in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]
