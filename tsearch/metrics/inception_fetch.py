"""Fetch pytorch-fid's Inception weights once into a cache, only when the user allows it.

For a user's machine with internet and no ``fid`` extra. Never on by default: tests and the demo
use the packaged export. As with ``torch.hub``, the published checksum is the sha256 prefix in
the file name (``pt_inception-2015-12-05-6726825d.pth``): a download whose sha256 does not start
with it is deleted and refused, and a cached file is re-checked before each use.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from tsearch.errors import DataError
from tsearch.metrics._cache import atomic_write

DOWNLOAD_ENV = "TSEARCH_INCEPTION_DOWNLOAD"  # "1": allow the fetch
URL_ENV = "TSEARCH_INCEPTION_URL"  # a mirror of the same file (its name carries the checksum)
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[a-z]+$")


def download_allowed(flag: bool) -> bool:
    """``eval.inception_download`` or $TSEARCH_INCEPTION_DOWNLOAD=1."""
    return flag or os.environ.get(DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_weights(url: str, cache_dir: str | Path, timeout: float = 60.0) -> Path:
    """The file at ``url`` in ``cache_dir/inception/``, downloaded once and checksum-verified."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    match = _HASH_IN_NAME.search(name)
    if match is None:
        raise DataError(f"{url} has no sha256 prefix in its file name (NAME-<sha256>.pth), so "
                        "it cannot be verified; use the pytorch-fid release URL or a mirror of it")
    prefix = match.group(1)
    path = Path(cache_dir).expanduser() / "inception" / name
    if path.is_file():
        if _sha256(path).startswith(prefix):
            return path
        path.unlink()  # a cached file that no longer verifies is fetched again
    print(f"tsearch: downloading the FID Inception weights from {url} into {path.parent}",
          file=sys.stderr)

    def write(handle: IO[bytes]) -> None:
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
                for block in iter(lambda: response.read(1 << 20), b""):
                    h.update(block)
                    handle.write(block)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(f"could not download {url} ({reason}); download it by hand and "
                            "give its path as eval.inception_weights=PATH") from None
        if not h.hexdigest().startswith(prefix):
            raise DataError(f"the download of {url} has sha256 {h.hexdigest()[:12]}..., not the "
                            f"published {prefix}...: refused (a truncated or altered file)")

    atomic_write(path, write)  # the temp file is removed when the checksum refuses it
    return path
