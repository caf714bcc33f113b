"""A synthetic COCO-format detection set that is hard enough for the CPU proxy search to rank necks.

A few simple shapes of three sizes on a flat background are solved in a minute on this machine
(AP50 0.72 measured on a 2-core CPU), leaving no room for a better feature pyramid to show. This set
adds what makes real detection hard, and what a neck is for:

- scale: object sides are log-uniform from 4 px to 80% of the image, so every pyramid level has
  work and tiny objects need fine, semantically strong features;
- fine-grained classes: a class is a (shape, colour) pair, and the first classes are enumerated so
  that classes share shapes and colours; colours are perturbed and shaded per object, and
  orange/red/yellow are close, so neither cue alone decides;
- a long tail: Zipf-like class weights, the most common class 10x the rarest;
- crowding and occlusion: 2-12 objects per image drawn in order over each other; the annotation is
  the full box, dropped only when later objects cover more than 80% of the object;
- clutter: textured backgrounds (gradients, blotches, stripes, noise) and unannotated thin lines,
  some in object colours, some over objects.

Output is deterministic: every image has its own random stream spawned from ``seed``, the val split
(the held-out reward split) from a stream separate from train's, so no image is shared.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from nas_errors import UserError

Box = tuple[float, float, float, float]

SHAPES = ("ellipse", "rectangle", "triangle", "star", "cross", "ring", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 75, 215),
    "yellow": (225, 205, 45),
    "magenta": (195, 50, 195),
    "cyan": (40, 195, 205),
    "orange": (235, 135, 35),
    "white": (235, 235, 235),
}
MIN_SIDE = 4.0
MAX_SIDE_FRACTION = 0.8
OBJECTS_PER_IMAGE = (2, 12)
TAIL_RATIO = 10.0
MAX_COVERED = 0.8
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class SyntheticDataset:
    """Annotation files and image roots, ready for ``CocoDetection(ann, images)``."""

    train_ann: Path
    val_ann: Path
    train_images: Path
    val_images: Path


@dataclass(frozen=True)
class _Object:
    label: int  # 0-based class index
    mask: np.ndarray  # bool [H, W]
    box: tuple[int, int, int, int]  # tight pixel box of the mask, end exclusive


def synthetic_classes(num_classes: int) -> list[tuple[str, str]]:
    """(shape, colour) of the first ``num_classes`` classes, enumerated along diagonals of the
    shape x colour grid so early classes share shapes and colours with each other."""
    colours = list(COLOURS)
    pairs = [
        (SHAPES[s], colours[(s + d) % len(colours)]) for d in range(len(colours)) for s in range(len(SHAPES))
    ]
    if not 1 <= num_classes <= len(pairs):
        raise UserError(f"num_classes: expected 1..{len(pairs)} (shapes x colours), got {num_classes}")
    return pairs[:num_classes]


def generate_synthetic_dataset(
    out_dir: Path, num_train: int, num_val: int, image_size: int, num_classes: int, seed: int
) -> SyntheticDataset:
    """Write ``train/``, ``val/`` PNGs and ``annotations/{train,val}.json`` under ``out_dir``."""
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if value < 1:
            raise UserError(f"{name}: expected at least 1 image, got {value}")
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"image_size: expected at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    classes = synthetic_classes(num_classes)
    meta, train_seq, val_seq = np.random.SeedSequence(seed).spawn(3)
    weights = _class_weights(np.random.default_rng(meta), num_classes)
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count, sequence in (("train", num_train, train_seq), ("val", num_val, val_seq)):
        data = _write_split(out_dir / split, sequence, count, image_size, classes, weights)
        data["categories"] = [
            {"id": label + 1, "name": f"{colour}_{shape}", "supercategory": shape}
            for label, (shape, colour) in enumerate(classes)
        ]
        (out_dir / "annotations" / f"{split}.json").write_text(json.dumps(data) + "\n")
    return SyntheticDataset(
        train_ann=out_dir / "annotations" / "train.json",
        val_ann=out_dir / "annotations" / "val.json",
        train_images=out_dir / "train",
        val_images=out_dir / "val",
    )


def _class_weights(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """Zipf-like probabilities, largest / smallest = TAIL_RATIO, assigned to classes at random."""
    exponent = math.log(TAIL_RATIO) / math.log(num_classes) if num_classes > 1 else 0.0
    weights = (1.0 + rng.permutation(num_classes)) ** -exponent
    return weights / weights.sum()


def _write_split(
    image_dir: Path,
    sequence: np.random.SeedSequence,
    count: int,
    size: int,
    classes: list[tuple[str, str]],
    weights: np.ndarray,
) -> dict[str, Any]:
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, child in enumerate(sequence.spawn(count), 1):
        pixels, objects = _render(np.random.default_rng(child), size, classes, weights)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in objects:
            x0, y0, x1, y1 = obj.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations}


def _render(
    rng: np.random.Generator, size: int, classes: list[tuple[str, str]], weights: np.ndarray
) -> tuple[np.ndarray, list[_Object]]:
    """One image (uint8 [H, W, 3]) and its annotated objects, drawn back to front."""
    canvas = _background(rng, size)
    _draw_clutter(canvas, rng, int(rng.integers(2, 8)))
    objects = []
    for _ in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        label = int(rng.choice(len(weights), p=weights))
        shape, colour = classes[label]
        mask = _shape_mask(shape, _object_box(rng, size), size)
        if mask.any():
            obj = _Object(label, mask, _mask_box(mask))
            _paint(canvas, rng, obj, np.array(COLOURS[colour], dtype=np.float64))
            objects.append(obj)
    _draw_clutter(canvas, rng, int(rng.integers(0, 3)))
    canvas += rng.normal(0.0, 4.0, canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8), _visible(objects, size)


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour: a grey level with a small per-channel tint."""
    return rng.uniform(40, 200) + rng.uniform(-35, 35, 3)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient, maybe blended with blotches and stripes, plus noise; float [H, W, 3] in 0..255."""
    coords = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    angle = rng.uniform(0, 2 * math.pi)
    ramp = math.cos(angle) * xx + math.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    start, end = _muted(rng), _muted(rng)
    canvas = start + (end - start) * ramp[..., None]
    if rng.random() < 0.7:
        cells = int(rng.integers(2, 8))
        low = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        blotches = np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR), dtype=np.float64)
        alpha = rng.uniform(0.2, 0.6)
        canvas = (1 - alpha) * canvas + alpha * blotches
    if rng.random() < 0.5:
        angle = rng.uniform(0, math.pi)
        phase = 2 * math.pi * rng.uniform(3, 16) * (math.cos(angle) * xx + math.sin(angle) * yy)
        canvas += np.sin(phase + rng.uniform(0, 2 * math.pi))[..., None] * rng.uniform(-40, 40, 3)
    return canvas + rng.normal(0.0, rng.uniform(2, 14), canvas.shape)


def _draw_clutter(canvas: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Unannotated thin polylines, half of them in object colours, some reaching past the border."""
    size = canvas.shape[0]
    palette = list(COLOURS.values())
    for _ in range(count):
        points = rng.uniform(-0.1 * size, 1.1 * size, (int(rng.integers(2, 4)), 2))
        width = int(rng.integers(1, 3))
        mask = _draw_mask(size, lambda draw: draw.line([tuple(p) for p in points], fill=255, width=width))
        colour = np.array(palette[int(rng.integers(len(palette)))]) if rng.random() < 0.5 else _muted(rng)
        canvas[mask] = colour + rng.normal(0, 12, 3)


def _object_box(rng: np.random.Generator, size: int) -> Box:
    """A box inside the image with log-uniform side sqrt(w * h) and aspect ratio in [1/2, 2]."""
    side = math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE_FRACTION * size)))
    aspect = math.sqrt(math.exp(rng.uniform(-math.log(2), math.log(2))))
    width, height = (min(max(side * f, 3.0), size) for f in (aspect, 1 / aspect))
    x0, y0 = rng.uniform(0, size - width), rng.uniform(0, size - height)
    return x0, y0, x0 + width, y0 + height


def _star(box: Box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    radii = [1.0 if k % 2 == 0 else 0.45 for k in range(10)]
    angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
    return [(cx + r * rx * math.cos(a), cy + r * ry * math.sin(a)) for r, a in zip(radii, angles)]


def _cross(draw: ImageDraw.ImageDraw, box: Box) -> None:
    x0, y0, x1, y1 = box
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, 0.17 * (x1 - x0), 0.17 * (y1 - y0)
    draw.rectangle([x0, cy - half_h, x1, cy + half_h], fill=255)
    draw.rectangle([cx - half_w, y0, cx + half_w, y1], fill=255)


def _ring(draw: ImageDraw.ImageDraw, box: Box) -> None:
    thickness = max(1, round(0.2 * min(box[2] - box[0], box[3] - box[1])))
    draw.ellipse(box, outline=255, width=thickness)


def _triangle(box: Box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    return [(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)]


def _diamond(box: Box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]


_SHAPE_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, Box], None]] = {
    "ellipse": lambda draw, box: draw.ellipse(box, fill=255),
    "rectangle": lambda draw, box: draw.rectangle(box, fill=255),
    "triangle": lambda draw, box: draw.polygon(_triangle(box), fill=255),
    "star": lambda draw, box: draw.polygon(_star(box), fill=255),
    "cross": _cross,
    "ring": _ring,
    "diamond": lambda draw, box: draw.polygon(_diamond(box), fill=255),
}


def _draw_mask(size: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    image = Image.new("L", (size, size))
    draw(ImageDraw.Draw(image))
    return np.asarray(image) > 0


def _shape_mask(shape: str, box: Box, size: int) -> np.ndarray:
    # PIL boxes include their last pixel; shrink by one so a w-wide box covers w pixels.
    inclusive = (box[0], box[1], box[2] - 1, box[3] - 1)
    return _draw_mask(size, lambda draw: _SHAPE_DRAWERS[shape](draw, inclusive))


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight pixel box (x0, y0, x1, y1), end exclusive, of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _paint(canvas: np.ndarray, rng: np.random.Generator, obj: _Object, base: np.ndarray) -> None:
    """Fill the object in a perturbed version of its class colour with a random linear shading."""
    colour = base * rng.uniform(0.75, 1.1) + rng.normal(0, 12, 3)
    x0, y0, x1, y1 = obj.box
    gy, gx = np.mgrid[0 : y1 - y0, 0 : x1 - x0]
    shade = 1 + rng.uniform(-0.3, 0.3) * (gx / max(x1 - x0, 1) - 0.5) + rng.uniform(-0.3, 0.3) * (
        gy / max(y1 - y0, 1) - 0.5
    )
    inside = obj.mask[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][inside] = (shade[..., None] * colour)[inside]


def _visible(objects: list[_Object], size: int) -> list[_Object]:
    """Objects not more than MAX_COVERED hidden by objects drawn after them, in drawing order."""
    covered = np.zeros((size, size), dtype=bool)
    kept = []
    for obj in reversed(objects):
        if (obj.mask & covered).sum() <= MAX_COVERED * obj.mask.sum():
            kept.append(obj)
        covered |= obj.mask
    return kept[::-1]
