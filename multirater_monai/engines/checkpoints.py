"""Finding training checkpoints to resume from."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["latest_checkpoint"]


def latest_checkpoint(checkpoint_dir: str | os.PathLike, required: bool = True) -> str | None:
    """Path of the most recently written ``*.pt`` training checkpoint in ``checkpoint_dir``.

    Args:
        checkpoint_dir: folder written by the trainer's ``CheckpointSaver``.
        required: raise a clear error when there is none (``resume=true`` with nothing to resume).
    """
    folder = Path(checkpoint_dir)
    found = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not found:
        if required:
            raise FileNotFoundError(f"{folder}: no training checkpoint to resume from (train once without resume).")
        return None
    return str(found[-1])
