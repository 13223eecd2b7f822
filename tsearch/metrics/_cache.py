"""Build-once file caches shared by concurrent processes (parallel Ray trials, several nodes).

Readers never see a half-written file (temp file + ``os.replace``), and at most one process builds
a given entry: the others wait on an ``fcntl.flock`` and then load what it wrote.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import torch

T = TypeVar("T")


def short_hash(obj: Any) -> str:
    """16 hex chars identifying a JSON-serialisable recipe (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def state_dict_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """16 hex chars over names, dtypes, shapes and bytes of every tensor: the weights' identity."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(state):
        t = state[name].detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive inter-process lock held for the ``with`` block (released if the process dies)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(handle)`` into a temp file beside ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would make the file private to this user).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_or_build(
    path: Path, load: Callable[[Path], T | None], build_and_save: Callable[[], T]
) -> tuple[T, bool]:
    """Return ``(value, built)``: the cached value, or build it under the lock.

    ``load`` returns None for an absent or unusable (corrupt, mismatched) file, which is then
    rebuilt. ``build_and_save`` must write ``path`` atomically. The cache is checked again after
    the lock is taken, so processes that waited load the winner's file instead of rebuilding.
    """
    if path.exists():
        value = load(path)
        if value is not None:
            return value, False
    with file_lock(path.with_name(path.name + ".lock")):
        if path.exists():
            value = load(path)
            if value is not None:
                return value, False
        return build_and_save(), True
