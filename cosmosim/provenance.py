"""Where a result came from: the checkout's git commit and files' checksums."""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent  # the checkout (or install prefix) holding cosmosim/


@lru_cache(maxsize=None)
def repository_commit() -> str | None:
    """The git commit of the cosmosim checkout in use, or None outside a git checkout."""
    root = REPOSITORY
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
