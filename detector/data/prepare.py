"""Resolve a dataset's files, generating the synthetic dataset on first use.

Shared by the proxy trainer and the full trainer, so both read and regenerate the synthetic set the
same way (and ``nas dataset synth`` writes the same files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from detector.config import StrictModel
from nas_errors import UserError

MANIFEST = "synthetic.json"


class SyntheticDataConfig(StrictModel):
    """Generated once into ``root`` (if absent) by the same code as ``nas dataset synth``."""

    root: Path
    """Folder of the generated dataset (created on first use)."""
    num_train: int = Field(400, ge=1, le=100_000)
    """Training images."""
    num_val: int = Field(100, ge=1, le=100_000)
    """Held-out images."""
    image_size: int = Field(128, ge=32, le=4096)
    """Image side in pixels."""
    num_classes: int = Field(8, ge=1)
    """Number of (shape, colour) classes."""
    seed: int = 0
    """Generation seed; the same settings give the same files."""


@dataclass(frozen=True)
class DatasetPaths:
    train_annotations: Path
    train_images: Path
    val_annotations: Path
    val_images: Path


def ensure_synthetic_dataset(config: SyntheticDataConfig) -> DatasetPaths:
    """Generate the dataset into ``config.root`` unless it is there with the same settings.

    Generation writes to a temporary folder and renames it into place, so parallel workers that
    race to create it end up sharing one complete copy.
    """
    root = config.root
    wanted = config.model_dump(mode="json", exclude={"root"})
    if not root.exists():
        try:
            _generate(config, wanted)
        except OSError as error:
            raise UserError(f"{root}: cannot create the synthetic dataset here ({error.strerror})") from None
    manifest = root / MANIFEST
    if not manifest.exists():
        raise UserError(f"{root}: exists but is not a generated synthetic dataset (no {MANIFEST})")
    found = json.loads(manifest.read_text())
    if found != wanted:
        changed = sorted(k for k in wanted if found.get(k) != wanted[k])
        raise UserError(
            f"{root}: holds a synthetic dataset generated with other settings ({', '.join(changed)}: "
            f"{ {k: found.get(k) for k in changed} } there, { {k: wanted[k] for k in changed} } wanted); "
            "remove it or choose another root"
        )
    return DatasetPaths(
        root / "annotations" / "train.json", root / "train", root / "annotations" / "val.json", root / "val"
    )


def _generate(config: SyntheticDataConfig, manifest: dict) -> None:
    """Generate into a private staging folder, then rename it into place (atomic for readers)."""
    from detector.data.synthetic import generate_synthetic_dataset  # numpy and PIL, only when generating

    root = config.root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    generate_synthetic_dataset(
        staging, config.num_train, config.num_val, config.image_size, config.num_classes, config.seed
    )
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    staging.chmod(0o755)  # mkdtemp makes it private; workers of other users read it on shared storage
    try:
        os.rename(staging, root)
    except OSError:
        shutil.rmtree(staging)  # another worker finished first
