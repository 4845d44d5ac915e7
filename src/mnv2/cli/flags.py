"""A verb's flags from its typed config: each field made with :func:`mnv2.typed.option` is one flag, whose name,
type, range, unit and help are the field's (``mnv2 train`` from ``TrainConfig``, ``export`` from ``ExportOptions``,
``serve`` from ``ServeSettings``, ``quantize`` and ``bench`` from theirs)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mnv2.cli.common import image_size, number
from mnv2.typed import option_fields

_TYPES = {"int": int, "float": float, "str": str}


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(f: dataclasses.Field) -> str:
    text = str(f.type).replace(" | None", "").replace("None | ", "")
    return text.split("[")[0].split(" |")[0]


def add_flags(
    parser: argparse.ArgumentParser, cls: type, *, show_defaults: bool = True, skip: tuple[str, ...] = (),
    prefix: str = "", only: tuple[str, ...] | None = None,
) -> list[dataclasses.Field]:  # fmt: skip
    """Add a flag per option field of ``cls`` (not those in ``skip``; with ``only``, just those): see
    :func:`add_fields`. Returns the fields added."""
    fields = [f for f in option_fields(cls) if f.name not in skip and (only is None or f.name in only)]
    return add_fields(parser, fields, show_defaults=show_defaults, prefix=prefix)


def add_fields(
    parser: argparse.ArgumentParser, fields: list[dataclasses.Field], *, show_defaults: bool = True, prefix: str = ""
) -> list[dataclasses.Field]:
    """Add a flag per field (made with :func:`mnv2.typed.option`). ``show_defaults``: the help states the field's
    default (a config whose flags override a recipe's values says nothing: ``None`` keeps the recipe's). ``prefix``
    starts each help text (``"speed: "``). Returns the fields added."""
    added = []
    for f in fields:
        m, name = f.metadata, flag_name(f)
        kind = m.get("kind") or ("float" if m.get("scale") else _base_type(f))  # 1.5 MiB is a whole number of bytes
        default = None if f.default is dataclasses.MISSING else f.default
        scale = m.get("scale") or 1
        help_text = prefix + m["help"] + (f" ({', '.join(map(str, m['choices']))})" if m.get("choices") else "")
        if kind == "bool":
            parser.add_argument(name, dest=f.name, action="store_const", const=not m.get("invert"), default=None,
                                help=help_text)  # fmt: skip
            added.append(f)
            continue
        if show_defaults and default is not None:
            shown = default / scale if scale != 1 else default
            help_text += f" (default {shown:g}{' ' + m['unit'] if m.get('unit') else ''})" if isinstance(
                shown, (int, float)) else f" (default {shown})"  # fmt: skip
        elif m.get("unit"):
            help_text += f" ({m['unit']})"
        parse: Any
        if kind == "size":
            parse = image_size
        elif kind == "list":
            parse = str
        elif kind in ("int", "float") and any(m.get(k) is not None for k in ("low", "above", "high")):
            parse = number(_TYPES[kind], low=m.get("low"), above=m.get("above"), high=m.get("high"))
        else:
            parse = _TYPES.get(kind, str)
        # choices are the config's to check (one message for a flag and a recipe's value), not argparse's
        metavar = m.get("metavar") or f.name.upper()
        parser.add_argument(name, dest=f.name, type=parse, default=None, help=help_text,
                            nargs="+" if kind == "list" else None, metavar=metavar)  # fmt: skip
        added.append(f)
    return added


def values_from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (scaled to the field's unit), for ``cls(**values)`` or
    ``dataclasses.replace``; flags not given are left out, so the config's defaults stay."""
    values = {}
    for f in option_fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        scale = f.metadata.get("scale")
        values[f.name] = type(f.default)(value * scale) if scale and isinstance(f.default, (int, float)) else value
    return values
