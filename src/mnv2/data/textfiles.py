"""Reading a dataset's text files (split lists, COCO JSON, classes.json, the image paths they name) with one error
surface: a file that is not UTF-8, not JSON or nested too deeply to parse is the file's error, named, never a crash
(issue 28, 11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnv2.errors import Mnv2Error


def read_text(path: str | Path, error: type[Mnv2Error]) -> str:
    """The file's text (UTF-8; a byte-order mark is dropped); ``error`` naming the file when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise error(f"cannot read {str(path)!r} ({e.strerror or e})") from e


def path_inside(folder: Path, name: str, source: Path, field_name: str, error: type[Mnv2Error]) -> Path:
    """``folder / name`` when ``name``, an image named by an annotation file (``source``, its ``field_name``), is a
    relative path that stays in ``folder``: an annotation must not point an evaluation at another file, so an
    absolute path or ``..`` is ``error`` (issue 28, 8)."""
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not name.strip():
        raise error(
            f"{str(source)!r}: {field_name} {name!r} is not a path inside {str(folder)!r} (absolute "
            "paths and '..' are refused: an annotation names its image relative to the image folder)"
        )
    return folder / p


def read_list(path: str | Path, error: type[Mnv2Error]) -> list[str]:
    """The first word of each non-empty line (a split list such as VOC's ``ImageSets/Main/val.txt``)."""
    return [line.split()[0] for line in read_text(path, error).splitlines() if line.strip()]


def read_json(path: str | Path, error: type[Mnv2Error]) -> Any:
    text = read_text(path, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{str(path)!r} is not valid JSON ({e})") from e
    except RecursionError as e:
        raise error(f"{str(path)!r} is nested too deeply to read") from e
