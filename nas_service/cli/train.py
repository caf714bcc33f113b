"""``nas train`` and ``nas eval``: full-size training and testing of the exported detector."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from detector.engine.config import DetectorTrainingConfig
from nas_errors import UserError
from nas_service.yaml_config import load_config

CONFIG_OPTION = typer.Option(..., "-c", "--config", help="Detector config YAML (nas export best --to detector-config).")


def train_command(
    config_path: Path = CONFIG_OPTION,
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Checkpoints and TensorBoard logs (default: work_dirs/<config name>)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the work dir."),
) -> None:
    """Train the detector; under torchrun every process runs this (see docs/training.md)."""
    from detector.engine.trainer import train  # torch: loaded by the commands that train, not by `nas --help`

    config = load_config(config_path, DetectorTrainingConfig)
    work_dir = work_dir or Path("work_dirs") / config_path.stem
    result = train(config, work_dir, resume=resume, log=typer.echo)
    typer.echo(f"done: {result.iterations} iterations, {result.images_per_second:.2f} img/s; {result.checkpoint}")


def eval_command(
    config_path: Path = CONFIG_OPTION,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="The checkpoint to test."),
    ensemble: bool = typer.Option(
        False, "--ensemble", help="Fuse the boxes of the checkpoints listed after the options (test.ensemble)."
    ),
    members: Optional[list[Path]] = typer.Argument(None, help="With --ensemble: the checkpoints.", show_default=False),
    tta: bool = typer.Option(False, "--tta", help="Multi-scale + flip test (test.tta in the config)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the detections here (COCO results JSON)."),
) -> None:
    """Test a checkpoint (or fuse an ensemble) on the evaluation split and print COCO AP."""
    from detector.coco_eval import summary_lines, write_detections
    from detector.engine.evaluate import evaluate

    config = load_config(config_path, DetectorTrainingConfig)
    checkpoints = ([checkpoint] if checkpoint else []) + list(members or [])
    if ensemble and len(checkpoints) < 2:
        raise UserError("--ensemble: list two or more checkpoints, e.g. --ensemble CKPT1 CKPT2")
    if not ensemble and len(checkpoints) != 1:
        raise UserError("give --checkpoint CKPT, or --ensemble CKPT1 CKPT2 ...")
    result = evaluate(config, checkpoints, tta=tta or config.test.tta.enabled, log=typer.echo)
    for line in summary_lines(result.metrics):
        typer.echo(line)
    per_image = result.seconds / max(result.num_images, 1)
    typer.echo(f"{result.num_images} images, {len(result.detections)} detections, {per_image:.3f} s per image")
    if out is not None:
        write_detections(out, result.detections)
        typer.echo(f"detections: {out}")
