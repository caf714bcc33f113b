"""Checkpoints: a training run's files, and starting a detector from one trained on other classes.

A checkpoint holds everything an exact resume needs: model, optimizer, scheduler and AMP scaler
states, the iteration, every process's RNG states and the loss history, plus the class names and
the config for evaluation and for initialising other runs. In a work directory they are written
atomically, with a pointer to the latest and pruning of old periodic ones.

``init_from_checkpoint`` starts a detector from a checkpoint trained on another label set (COCO ->
Objects365, Full -> Tiny). Layers whose name and shape match load as they are. The class-dependent
layers, the cascade stages' classifiers (one row per class, row 0 the background), are remapped by
category name or left freshly initialised; every other layer whose shape differs keeps its fresh
initialisation. ``InitReport`` says which layers did what and which classes found a match, so a
silent mismatch cannot pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

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


CLASS_LAYER_SUFFIX = "predictor.cls_score"


@dataclass
class InitReport:
    path: Path
    loaded: list[str] = field(default_factory=list)
    """Tensors loaded unchanged."""
    remapped: list[str] = field(default_factory=list)
    """Class-dependent tensors whose rows were copied by category name."""
    reinitialised: list[str] = field(default_factory=list)
    """Class-dependent tensors left at their fresh initialisation."""
    shape_mismatch: list[str] = field(default_factory=list)
    """Other tensors whose shapes differ; they keep their fresh initialisation."""
    missing: list[str] = field(default_factory=list)
    """Model tensors the checkpoint does not have."""
    unexpected: list[str] = field(default_factory=list)
    """Checkpoint tensors the model does not have."""
    matched_classes: dict[str, str] = field(default_factory=dict)
    """This dataset's class name -> the checkpoint's class name whose weights it took."""
    unmatched_classes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A human summary, one fact per line."""
        lines = [
            f"init from {self.path}: {len(self.loaded)} tensors loaded, {len(self.remapped)} remapped by class, "
            f"{len(self.reinitialised)} class-dependent re-initialised, {len(self.shape_mismatch)} skipped "
            f"(shape differs), {len(self.missing)} not in the checkpoint, {len(self.unexpected)} unused"
        ]
        if self.remapped:
            total = len(self.matched_classes) + len(self.unmatched_classes)
            lines.append(
                f"  classes matched by name: {len(self.matched_classes)} of {total}; "
                f"new (fresh rows): {_preview(self.unmatched_classes)}"
            )
        for title, names in (
            ("re-initialised", self.reinitialised),
            ("shape differs", self.shape_mismatch),
            ("not in the checkpoint", self.missing),
            ("unused", self.unexpected),
        ):
            if names:
                lines.append(f"  {title}: {_preview(names)}")
        return lines


def read_state(path: str | Path) -> tuple[dict[str, Tensor], list[str] | None]:
    """The model state dict and class names of a checkpoint: ours (``model`` + ``class_names``),
    or a bare state dict (no names). A ``module.`` prefix from DistributedDataParallel is removed."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    return model_state(checkpoint), checkpoint.get("class_names")


def model_state(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model tensors of a loaded checkpoint (ours, ``{"state_dict": ...}`` or bare)."""
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    return {key.removeprefix("module."): value for key, value in state.items() if torch.is_tensor(value)}


def init_from_checkpoint(
    model: nn.Module,
    path: str | Path,
    class_names: Sequence[str],
    classes: str = "remap",
    class_map: Mapping[str, str] | None = None,
) -> InitReport:
    """Load ``path`` into ``model`` whose classes are ``class_names`` (label order, 1..K).

    ``classes="remap"`` copies each class's classifier row from the checkpoint class of the same name
    (case-insensitive; ``class_map`` adds matches, this dataset's name -> the checkpoint's) and the
    background row; ``"reinit"`` leaves the classifiers fresh. Remapping needs the checkpoint's class
    names, which a bare state dict does not carry.
    """
    if classes not in ("remap", "reinit"):
        raise UserError(f"train.init_classes: expected remap or reinit, got {classes!r}")
    state, source_names = read_state(path)
    report = InitReport(Path(path))
    if classes == "remap" and source_names is None:
        raise UserError(
            f"{path}: has no class_names, so classes cannot be remapped by name; set train.init_classes: reinit"
        )
    rows = _row_mapping(class_names, source_names, class_map or {}, report) if classes == "remap" else None
    own = model.state_dict()
    merged: dict[str, Tensor] = {}
    for key, target in own.items():
        if key not in state:
            report.missing.append(key)
        elif _is_class_dependent(key):
            if rows is None:
                report.reinitialised.append(key)
            else:
                merged[key] = _remap_rows(target, state[key], rows)
                report.remapped.append(key)
        elif state[key].shape != target.shape:
            report.shape_mismatch.append(key)
        else:
            merged[key] = state[key]
            report.loaded.append(key)
    report.unexpected = [key for key in state if key not in own]
    model.load_state_dict(merged, strict=False)
    return report


def _is_class_dependent(key: str) -> bool:
    return key.rsplit(".", 1)[0].endswith(CLASS_LAYER_SUFFIX)


def _row_mapping(
    class_names: Sequence[str], source_names: Sequence[str], class_map: Mapping[str, str], report: InitReport
) -> dict[int, int]:
    """Target row -> source row (0 is the background in both), recording matches in ``report``."""
    source_row = {name.strip().lower(): row for row, name in enumerate(source_names, 1)}
    for name, source in class_map.items():
        if name not in class_names:
            raise UserError(f"train.init_class_map: {name!r} is not a class of this dataset")
        if source.strip().lower() not in source_row:
            raise UserError(f"train.init_class_map.{name}: {source!r} is not a class of the checkpoint")
    rows = {0: 0}
    for row, name in enumerate(class_names, 1):
        source = class_map.get(name, name)
        match = source_row.get(source.strip().lower())
        if match is None:
            report.unmatched_classes.append(name)
        else:
            rows[row] = match
            report.matched_classes[name] = source_names[match - 1]
    return rows


def _remap_rows(target: Tensor, source: Tensor, rows: dict[int, int]) -> Tensor:
    """``target`` (fresh) with the mapped rows copied from ``source``."""
    if target.shape[1:] != source.shape[1:]:
        raise UserError(
            f"class-dependent layer: rows of {list(source.shape[1:])} in the checkpoint, "
            f"{list(target.shape[1:])} in the model; the heads differ beyond the classes"
        )
    out = target.clone()
    index = torch.tensor(list(rows), dtype=torch.int64)
    out[index] = source[torch.tensor(list(rows.values()), dtype=torch.int64)].to(out.dtype)
    return out


def _preview(names: Sequence[Any], limit: int = 6) -> str:
    shown = ", ".join(str(name) for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
