"""What every verb shares: the parser that fails in one line, argument types with ranges, strict JSON output, the
checks made before any work, and the engine threads."""

from __future__ import annotations

import argparse
import json
import math
import sys

from mnv2.errors import ConfigError


def finite(obj):
    """``obj`` with every NaN or infinity replaced by ``None``: strict JSON (``null``), never ``NaN``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj) -> str:
    """One strict JSON document (``--json``)."""
    return json.dumps(finite(obj), allow_nan=False)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line ``mnv2: error: ...`` (exit status 2) like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"mnv2: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def number(kind: type, low: float | None = None, above: float | None = None, high: float | None = None):
    """A parser of a finite ``kind`` (int or float) ``>= low``, ``> above`` and ``<= high``: argparse's ``float``
    takes nan and inf, and its ``int`` any sign."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} must be a finite number")
        for ok, what, bound in ((low is None or value >= low, ">=", low), (above is None or value > above, ">", above),
                                (high is None or value <= high, "<=", high)):  # fmt: skip
            if not ok:
                raise argparse.ArgumentTypeError(f"{text} must be {'an integer' if kind is int else 'a number'} "
                                                 f"{what} {bound:g}")  # fmt: skip
        return value

    bounds = [f"{w} {b:g}" for w, b in ((">=", low), (">", above), ("<=", high)) if b is not None]
    parse.__name__ = ("integer" if kind is int else "number") + (" " + " ".join(bounds) if bounds else "")
    return parse


positive, non_negative = number(int, low=1), number(int, low=0)


def port(text: str) -> int:
    value = non_negative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535)")
    return value


port.__name__ = "port 0-65535"


def image_size(text: str) -> int | tuple[int, int]:
    """``320`` (square) or ``480x360`` (width x height, as image sizes are written) → ``320`` or ``(360, 480)``."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give N or WIDTHxHEIGHT, e.g. 320 or 480x360")
    if len(parts) == 1:
        return int(parts[0])
    w, h = (int(p) for p in parts)
    return w if w == h else (h, w)


image_size.__name__ = "size N or WIDTHxHEIGHT"


def check_out_file(path: str, flag: str = "--out") -> None:
    """Refuse an output file path that cannot be written, before any work: a directory, or a path below a file."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path!r} is a directory; give a file name")
    parent = next((a for a in p.parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{flag} {path!r}: {str(parent)!r} is not a directory")


def set_threads() -> None:
    """torch's intra-op threads: the cores free now (``mnv2.cpu.auto_threads``)."""
    from mnv2.extras import require_torch

    require_torch("this command")
    import torch

    from mnv2.cpu import auto_threads

    torch.set_num_threads(auto_threads())


def status_line(quiet: bool):
    """A progress callback that rewrites one stderr line (nothing under ``--json``: stdout stays one document)."""

    def progress(msg: str) -> None:
        if not quiet:
            print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    return progress


def clear_status(quiet: bool) -> None:
    if not quiet:
        print("\r\033[K", end="", file=sys.stderr)


def task_of(path: str):
    """``(task, card info)`` of a checkpoint or an exported file, from its card (files exported before tasks are
    classifiers)."""
    from mnv2.deploy.runtime.card import read_card
    from mnv2.tasks import get_task

    name, info = read_card(path)
    return get_task(name), info


def chosen_tile(given: int | None, trained: int | None, note: bool = True) -> int | None:
    """``--tile``: the side given (0: whole images), else the tile the model was trained on (its card's ``tile``),
    said on stderr: a detector trained on 640-px tiles of large images sees whole ones at a scale it never learnt."""
    if given == 0:
        return None
    if given is None and trained:
        if note:
            print(f"mnv2: tiles of {trained} px, as the model was trained (--tile 0: whole images)", file=sys.stderr)
        return trained
    return given


def needs_extra(advice: str):
    """A verb's function when its extra is not installed: the answer names the extra, whatever the flags."""

    def run(args: argparse.Namespace) -> int:
        raise ConfigError(f"`mnv2 {args.verb}`: {advice}")

    run.accepts_any = True  # its flags are unknown here: any are taken, the answer is the same
    return run


def typed_config(parser: argparse.ArgumentParser, verb: str | None, name: str, module: str, attribute: str):
    """``module.attribute`` that gives ``name``'s flags (a typed config class, or ``flag_fields``), imported only
    when the command line's verb is ``name`` (or for the whole parser): such modules import torch, a second of every
    other verb's start-up. Without the extra that brings it (the torch-free runtime install), the verb answers which
    to install and ``None`` is returned."""
    if verb not in (None, name):
        return None
    import importlib

    try:
        return getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as e:
        from mnv2.extras import missing_extra

        if missing_extra(e) is None:
            raise
        parser.set_defaults(func=needs_extra(missing_extra(e)))
        return None
