"""``nas dataset``: make and inspect datasets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError

from detector.data.prepare import SyntheticDataConfig, ensure_synthetic_dataset
from detector.engine.config import SamplerConfig
from nas_errors import UserError
from nas_service.cli.common import config_option

if TYPE_CHECKING:
    import numpy as np

dataset_app = typer.Typer(help="Make and inspect datasets.", no_args_is_help=True)


_OPTIONS = {"num_train": "--train", "num_val": "--val", "image_size": "--size", "num_classes": "--classes", "seed": "--seed"}


def _synth_option(field: str, help: str) -> Any:
    """A ``nas dataset synth`` option whose default is ``SyntheticDataConfig``'s, so the two never differ."""
    return config_option(SyntheticDataConfig, field, _OPTIONS[field], help=help)


@dataset_app.command("synth")
def dataset_synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (train/, val/, annotations/)."),
    train: int = _synth_option("num_train", "Training images."),
    val: int = _synth_option("num_val", "Held-out reward images."),
    size: int = _synth_option("image_size", "Image side in pixels."),
    classes: int = _synth_option("num_classes", "Number of classes."),
    seed: int = _synth_option("seed", "Random seed; the same seed gives the same files."),
) -> None:
    """Generate the synthetic COCO-format proxy dataset (deterministic)."""
    values = {"root": out, "num_train": train, "num_val": val, "image_size": size, "num_classes": classes, "seed": seed}
    try:
        config = SyntheticDataConfig.model_validate(values)
    except ValidationError as error:
        problem = error.errors()[0]
        option = _OPTIONS.get(str(problem["loc"][0]), "--out")
        raise UserError(f"{option}: {problem['msg'].removeprefix('Value error, ')}") from None
    paths = ensure_synthetic_dataset(config)
    typer.echo(f"train: {paths.train_annotations} ({train} images in {paths.train_images})")
    typer.echo(f"val:   {paths.val_annotations} ({val} held-out images in {paths.val_images})")


@dataset_app.command("stats")
def dataset_stats(
    annotations: Path = typer.Argument(..., help="COCO-format annotation JSON (no image is read)."),
    diversity_eps: float = config_option(
        SamplerConfig, "diversity_eps", "--diversity-eps", min=0.0, help="eps of class_diversity sampling."
    ),
    repeat_threshold: float = config_option(
        SamplerConfig, "repeat_threshold", "--repeat-threshold", min=0.0, help="t of repeat_factor sampling."
    ),
    classes: int = typer.Option(30, "--classes", min=1, help="Show the N classes with the most boxes."),
    images: int = typer.Option(10, "--images", min=0, help="Show the weights of the first N images."),
) -> None:
    """Class counts, and what each training sampler makes of them.

    Per class: boxes, images containing it, and for each sampler the chance that a drawn image
    contains the class. Per image: each sampler's probability of drawing it, times the number of
    images (1.0 = as often as uniform sampling)."""
    import numpy as np

    from detector.config import SAMPLER_KINDS
    from detector.data.coco import annotation_labels  # torch: only for the commands that read data
    from detector.data.samplers import class_exposure, sampling_weights

    names, labels = annotation_labels(annotations)
    num_classes = len(names)
    boxes = np.bincount(np.concatenate([np.zeros(0, np.int64), *labels]), minlength=num_classes + 1)
    with_class = np.bincount(
        np.concatenate([np.zeros(0, np.int64), *(np.unique(x) for x in labels)]), minlength=num_classes + 1
    )
    weights = {
        kind: sampling_weights(kind, labels, num_classes, diversity_eps, repeat_threshold) for kind in SAMPLER_KINDS
    }
    typer.echo(f"{annotations}: {len(labels)} images, {num_classes} classes, {int(boxes.sum())} boxes")
    typer.echo(f"{'class':<24} {'boxes':>8} {'images':>7}  " + " ".join(f"{k:>15}" for k in SAMPLER_KINDS))
    exposure = {kind: class_exposure(w, labels, num_classes) for kind, w in weights.items()}
    for label in sorted(range(1, num_classes + 1), key=lambda c: (-boxes[c], c))[:classes]:
        shares = " ".join(f"{exposure[kind][label]:>15.4f}" for kind in SAMPLER_KINDS)
        typer.echo(f"{names[label - 1][:24]:<24} {boxes[label]:>8} {with_class[label]:>7}  {shares}")
    typer.echo("image draw rate relative to uniform (first images):")
    typer.echo(f"{'image':>6} {'classes':>7} {'boxes':>6}  " + " ".join(f"{k:>15}" for k in SAMPLER_KINDS))
    for index in range(min(images, len(labels))):
        rates = " ".join(f"{_rate(weights[kind], index):>15.3f}" for kind in SAMPLER_KINDS)
        typer.echo(f"{index:>6} {len(np.unique(labels[index])):>7} {len(labels[index]):>6}  {rates}")


def _rate(weights: "np.ndarray", index: int) -> float:
    total = weights.sum()
    return float(weights[index] * len(weights) / total) if total > 0 else 0.0
