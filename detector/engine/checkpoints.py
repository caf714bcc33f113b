"""Training checkpoints in a work directory: atomic writes, a pointer to the latest, pruning.

A checkpoint holds everything an exact resume needs: model, optimizer, scheduler and AMP scaler
states, the iteration, every process's RNG states and the loss history, plus the class names and
the config for evaluation and for initialising other runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from nas_errors import UserError

LATEST = "last_checkpoint"
FINAL = "model_final.pth"
_PERIODIC = re.compile(r"model_(\d{7})\.pth")


def periodic_name(iteration: int) -> str:
    return f"model_{iteration:07d}.pth"


def save_checkpoint(work_dir: Path, name: str, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` to ``work_dir/name`` and point ``last_checkpoint`` at it, each by an atomic
    rename, so a run killed mid-write leaves the previous checkpoint intact; keep the ``keep`` most
    recent periodic checkpoints."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / name
    staging = work_dir / f".{name}.tmp"
    torch.save(state, staging)
    os.replace(staging, path)
    pointer = work_dir / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, work_dir / LATEST)
    periodic = sorted(p for p in work_dir.iterdir() if _PERIODIC.fullmatch(p.name))
    for old in periodic[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The checkpoint ``last_checkpoint`` names, or None when the run never wrote one."""
    pointer = work_dir / LATEST
    if not pointer.exists():
        return None
    path = work_dir / pointer.read_text().strip()
    if not path.exists():
        raise UserError(f"{pointer}: names {path.name}, which does not exist")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:
        raise UserError(f"{path}: cannot read checkpoint: {error}") from None
