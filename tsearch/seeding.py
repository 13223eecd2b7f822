"""Seed derivation shared by the trainer and the user-loop helper."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, purpose: str) -> int:
    """Independent 63-bit seeds per purpose, so adding a generator never shifts another."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
