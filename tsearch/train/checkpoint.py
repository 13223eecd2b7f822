"""Checkpoints: everything needed for an exact resume, written atomically.

A checkpoint holds model, EMA, optimizer, sampler state, all generators, the step and image
counters and the histories logged so far. It is loaded with ``weights_only=True`` (no pickle
code execution), so it contains only tensors and plain Python containers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from tsearch.errors import CheckpointError

_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def checkpoint_path(directory: str | Path, images_seen: int) -> Path:
    return Path(directory) / f"ckpt-{images_seen:09d}.pt"


def save_checkpoint(state: dict[str, Any], directory: str | Path, images_seen: int,
                    keep: int = 2) -> Path:
    """Write ``state`` to ``directory`` (temp file + rename) and keep the ``keep`` newest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, images_seen)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely; a missing or corrupt file is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a tsearch checkpoint ({first[:120]}); "
            "delete it to resume from the previous one"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a tsearch checkpoint")
    return state
