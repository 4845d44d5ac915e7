"""File helpers every layer uses: writes that a crash never leaves half done, checksums, and mnv2's cache folder.

A core module: the standard library only, so data, weights, deploy and the engine share one copy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """mnv2's cache: ``$MNV2_CACHE``, else ``$XDG_CACHE_HOME/mnv2``, else ``~/.cache/mnv2``."""
    if os.environ.get("MNV2_CACHE"):
        return Path(os.environ["MNV2_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnv2"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks (weights, exported files, downloads)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name", str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would have
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Remove the ``.<name>.*.tmp`` files an interrupted :func:`atomic_write` left in ``directory``."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for f in d.glob(".*.tmp"):
        if f.is_file():
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed
