"""Downloading files into a cache with a checksum check (atomic: a failed download leaves nothing behind)."""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from mnv2.errors import Mnv2Error
from mnv2.files import sha256_file


class DownloadError(Mnv2Error):
    """A download failed or its checksum did not match."""


def download(
    url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0, progress: bool = True
) -> Path:
    """Fetch ``url`` to ``dest`` (with a progress bar), verify ``sha256`` if given, then rename into place.

    A failed, short (fewer bytes than ``Content-Length``) or mismatching download raises :class:`DownloadError` and
    leaves nothing at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", leave=False, disable=not progress
            ) as bar:
                while block := resp.read(1 << 16):
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
        if total is not None and done != total:
            raise DownloadError(f"download of {url} was cut short: {done} of {total} bytes")
        if sha256 is not None:
            got = sha256_file(tmp)
            if got != sha256:
                raise DownloadError(f"{url}: sha256 {got} does not match the expected {sha256}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
        raise DownloadError(f"could not download {url} ({e})") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest
