import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from detector.coco_eval import METRICS
from detector.data.coco import CocoDetection
from detector.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detector.engine import DetectorTrainingConfig
from detector.engine.evaluate import evaluate, load_for_testing
from detector.engine.trainer import train
from detector.inference import detect, detect_tta, fuse, view_transform
from detector.ops import Suppression
from nas_service.cli import app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny detector trained 6 iterations, with hard NMS so fused duplicates are easy to predict."""
    root = tmp_path_factory.mktemp("inference")
    data = yaml.safe_load((ROOT / "configs" / "detector" / "tiny.yaml").read_text())
    data["dataset"]["synthetic"]["root"] = str(root / "synthetic")
    data["detector"]["postprocess"] = {"nms": "hard", "iou_threshold": 0.5, "score_threshold": 0.05}
    config = DetectorTrainingConfig.model_validate(data)
    train(config, root / "work", log=lambda _: None)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return config, path, root / "work"


def val_set(config):
    paths = config.dataset.paths()
    return CocoDetection(paths.val_annotations, paths.val_images, train=False)


def by_score(found):
    order = found["scores"].argsort(descending=True, stable=True)
    return {key: value[order] for key, value in found.items()}


def test_single_view_tta_equals_plain_testing(trained):
    """Merging one unsuppressed view, then suppressing, is what the model's own post-processing does."""
    config, _, work = trained
    dataset = val_set(config)
    model = load_for_testing(config, work / "model_final.pth", dataset.class_names)
    indices = list(range(len(dataset)))
    # tiny.yaml's images are 64 x 64: short side 64 (max 96) is the identity view; batches of 3.
    plain = detect(model, dataset, indices, view_transform(64, 96), 3, torch.device("cpu"))
    merged = detect_tta(model, dataset, indices, [64], 96, False, 1000, 3, torch.device("cpu"))
    assert plain.keys() == merged.keys() and sum(len(d["scores"]) for d in plain.values()) > 0
    for image_id in plain:
        a, b = by_score(plain[image_id]), by_score(merged[image_id])
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])


# -- a stand-in detector with known output, for the view geometry and the merging ------------------
# One 40 x 60 image (H x W) holds a white rectangle at x 10..30, y 8..24 (an arbitrary box whose
# edges are even, so the 0.5x and 2x views resize it exactly). The stand-in "detects" it in the
# view's pixels and also reports a second box 4 view pixels to its right, with scores that depend on
# the view, so every view yields different boxes and scores once mapped back to the image.
OBJECT = (10.0, 8.0, 30.0, 24.0)
IMAGE_HEIGHT, IMAGE_WIDTH = 40, 60
SHIFT = 4.0  # view pixels; mapped back it becomes SHIFT / scale, mirrored in a flipped view


class RectangleFinder(torch.nn.Module):
    """Finds the bright rectangle of each view (mean intensity above 0.5 after ImageNet
    normalisation); like ``CascadeRCNN`` it suppresses with ``roi_heads.suppression`` unless the call
    passes another ``suppression``."""

    def __init__(self, suppression: Suppression) -> None:
        super().__init__()
        self.roi_heads = SimpleNamespace(suppression=suppression)

    def forward(self, images, image_sizes, suppression=None):
        threshold = (0.5 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
        found = []
        for image, (height, width) in zip(images, image_sizes):
            inside = image[0, :height, :width] > threshold
            rows, cols = torch.where(inside.any(1))[0], torch.where(inside.any(0))[0]
            box = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)
            score = 0.6 + 0.3 * box[0] / width  # 0.65 unflipped, 0.75 flipped (x1 / W is 1/6 or 1/2)
            boxes = torch.stack([box, box + torch.tensor([SHIFT, 0.0, SHIFT, 0.0])])
            scores = torch.stack([score, score / 2 + height / 400])  # the shifted box: + 0.05 at 0.5x, + 0.2 at 2x
            labels = torch.ones(2, dtype=torch.int64)
            keep, kept = (suppression or self.roi_heads.suppression)(boxes, scores, labels)
            found.append({"boxes": boxes[keep], "scores": kept, "labels": labels[keep]})
        return found


@pytest.fixture(scope="module")
def rectangle(tmp_path_factory) -> CocoDetection:
    root = tmp_path_factory.mktemp("rectangle")
    pixels = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    x1, y1, x2, y2 = (int(v) for v in OBJECT)
    pixels[y1:y2, x1:x2] = 255
    Image.fromarray(pixels).save(root / "rectangle.png")
    annotations = {
        "images": [{"id": 1, "file_name": "rectangle.png", "height": IMAGE_HEIGHT, "width": IMAGE_WIDTH}],
        "categories": [{"id": 1, "name": "rectangle"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
             "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
        ],
    }
    (root / "annotations.json").write_text(json.dumps(annotations))
    return CocoDetection(root / "annotations.json", root, train=False)


def shifted(offset: float) -> list[float]:
    """The second box mapped back to the image: OBJECT moved ``offset`` original pixels in x."""
    return [OBJECT[0] + offset, OBJECT[1], OBJECT[2] + offset, OBJECT[3]]


@pytest.mark.parametrize("flip", [False, True])
def test_a_view_maps_a_known_box_back_to_the_image(rectangle, flip):
    """At 0.5x the rectangle is found at x 5..15 (flipped: 15..25 of a 30-wide view) and the second box
    4 view pixels to its right; back in the image they are OBJECT and OBJECT moved by +8 (flipped: -8)."""
    model = RectangleFinder(Suppression(method="hard", iou_threshold=0.5))
    found = detect(model, rectangle, [0], view_transform(20, 200, flip=flip), 1, torch.device("cpu"))[1]
    offset = -2 * SHIFT if flip else 2 * SHIFT
    # In the view the two boxes overlap with IoU 6/14 = 0.43 < 0.5: hard NMS keeps both.
    torch.testing.assert_close(found["boxes"], torch.tensor([list(OBJECT), shifted(offset)], dtype=torch.float64))
    first = 0.75 if flip else 0.65
    torch.testing.assert_close(found["scores"], torch.tensor([first, first / 2 + 0.05], dtype=torch.float64))


def test_tta_merges_the_views_before_suppressing_them_once(rectangle):
    """Four views (0.5x and 2x, each plain and mirrored) merged under linear Soft-NMS, by hand.

    Back in the image every view finds OBJECT (scores 0.65 plain, 0.75 mirrored) and a shifted box:
    +8 (0.375) and -8 (0.425) from the 0.5x views, +2 (0.525) and -2 (0.575) from the 2x views. All
    boxes are 20 x 16 on the same rows, so two boxes overlapping by o pixels in x have IoU o / (40 - o).
    Linear Soft-NMS (Bodla et al. 2017), threshold 0.5, decays a box by 1 - IoU above it:
    1. OBJECT 0.75 is kept; the other three copies (IoU 1) fall to 0 and go; -2 and +2 (o = 18,
       IoU 9/11) are scaled by 2/11; -8 and +8 (o = 12, IoU 0.43) are untouched.
    2. -8 (0.425) is kept; -2 (o = 14, IoU 7/13) is scaled by 6/13; +2 (o = 10) and +8 (o = 4) are not.
    3. +8 (0.375) is kept; +2 (o = 14) is scaled by 6/13.
    4. -2 is kept; +2 (o = 16, IoU 2/3) is scaled by 1/3.  5. +2 is kept.
    A view left suppressed by itself (hard NMS at 0.5) would lose the 2x views' shifted boxes (IoU 9/11
    with OBJECT in the view), and a wrong un-flip would move the -8 and -2 boxes.
    """
    model = RectangleFinder(Suppression(method="linear", iou_threshold=0.5, score_threshold=1e-3))
    merged = detect_tta(model, rectangle, [0], [20, 80], 200, True, 100, 1, torch.device("cpu"))[1]
    expected = [
        (list(OBJECT), 0.75),
        (shifted(-8), 0.425),
        (shifted(+8), 0.375),
        (shifted(-2), 0.575 * 2 / 11 * 6 / 13),
        (shifted(+2), 0.525 * 2 / 11 * 6 / 13 / 3),
    ]
    assert merged["labels"].tolist() == [1] * 5
    torch.testing.assert_close(merged["boxes"], torch.tensor([box for box, _ in expected], dtype=torch.float64))
    torch.testing.assert_close(merged["scores"], torch.tensor([score for _, score in expected], dtype=torch.float64))


@pytest.mark.parametrize(
    "mode,nms", [("standard", "hard"), ("adaptive", "hard"), ("adaptive", "gaussian"), ("standard", "linear")]
)
def test_every_test_mode_scores_with_pycocotools(trained, mode, nms):
    config, _, work = trained
    detector = config.detector.model_copy(
        update={
            "cascade": config.detector.cascade.model_copy(update={"test_mode": mode}),
            "postprocess": config.detector.postprocess.model_copy(update={"nms": nms}),
        }
    )
    tested = config.model_copy(update={"detector": detector})
    single = evaluate(tested, [work / "model_final.pth"], log=lambda _: None)
    augmented = evaluate(tested, [work / "model_final.pth"], tta=True, log=lambda _: None)
    for result in (single, augmented):
        assert set(result.metrics) == set(METRICS) and result.num_images == 6  # tiny.yaml: num_val 6
        assert all(0.0 <= value <= 1.0 for value in result.metrics.values() if not math.isnan(value))
        assert 0 < len(result.detections) <= 6 * 100  # detections_per_image defaults to 100
    assert single.detections != augmented.detections


def test_ensemble_of_a_model_with_itself_keeps_its_boxes(trained):
    config, _, work = trained
    dataset = val_set(config)
    model = load_for_testing(config, work / "model_final.pth", dataset.class_names)
    found = detect(model, dataset, list(range(len(dataset))), view_transform(64, 96), 3, torch.device("cpu"))
    sizes = {i: (dataset.coco.imgs[i]["height"], dataset.coco.imgs[i]["width"]) for i in found}
    for method in ("wbf", "voting"):
        fused = fuse([found, found], sizes, method, iou_threshold=0.55)  # ensemble_boxes' default IoU
        for image_id, image in found.items():
            a, b = by_score(image), by_score(fused[image_id])
            assert torch.equal(a["labels"], b["labels"]), method
            torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)
            torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="test.ensemble.weights: 1 weights for 2 models"):
        fuse([found, found], sizes, "wbf", 0.55, weights=[1.0])


def as_detections(*rows) -> dict[str, torch.Tensor]:
    """Detections from (x1, y1, x2, y2, score, label) rows."""
    return {
        "boxes": torch.tensor([row[:4] for row in rows], dtype=torch.float64),
        "scores": torch.tensor([row[4] for row in rows], dtype=torch.float64),
        "labels": torch.tensor([row[5] for row in rows], dtype=torch.int64),
    }


# Two models' detections on one 100 x 200 (H x W) image, arbitrary. Model A (weight 3): box a of
# class 1 and box d of class 2. Model B (weight 1): box b, a moved 8 px right (IoU with a 2880 / 3520
# = 9/11 > 0.55, so they fuse), and box c of class 2 on top of a (a different class: never fused with a).
ENSEMBLE_WEIGHTS = [3.0, 1.0]
MODEL_A = ((20, 10, 100, 50, 0.9, 1), (150, 60, 190, 90, 0.3, 2))  # a, d
MODEL_B = ((28, 10, 108, 50, 0.6, 1), (24, 10, 104, 50, 0.5, 2))  # b, c
IOU_AB = 9 / 11


def _mean(weights, boxes):
    return [sum(w * box[i] for w, box in zip(weights, boxes)) / sum(weights) for i in range(4)]


@pytest.mark.parametrize("method", ["wbf", "voting", "soft_nms"])
def test_ensembles_with_unequal_weights_match_a_hand_calculation(method):
    a, d = MODEL_A
    b, c = MODEL_B
    if method == "wbf":
        # Weighted boxes fusion (Solovyev et al. 2021, ensemble_boxes' defaults): confidences s * w; a
        # cluster's box is their confidence-weighted mean, its score their mean times
        # min(models, boxes in the cluster) / sum of weights.
        expected = [
            (_mean([0.9 * 3, 0.6 * 1], [a, b]), (0.9 * 3 + 0.6 * 1) / 2 * 2 / 4, 1),
            (d[:4], 0.3 * 3 * 1 / 4, 2),
            (c[:4], 0.5 * 1 * 1 / 4, 2),
        ]
    elif method == "voting":
        # Non-maximum weighted (Zhou et al. 2017): weights divided by the largest (b and c count 1/3);
        # the top box keeps its score, its box is the mean of the cluster weighted by score * IoU with it.
        expected = [
            (_mean([0.9 * 1.0, 0.6 / 3 * IOU_AB], [a, b]), 0.9, 1),
            (d[:4], 0.3, 2),
            (c[:4], 0.5 / 3, 2),
        ]
    else:
        # Soft-NMS over the union, scores scaled by weight / largest weight, gaussian decay
        # exp(-IoU^2 / 0.5) per class (Bodla et al. 2017): only b, under a, decays.
        expected = [
            (a[:4], 0.9, 1),
            (d[:4], 0.3, 2),
            (c[:4], 0.5 / 3, 2),
            (b[:4], 0.6 / 3 * math.exp(-IOU_AB**2 / 0.5), 1),
        ]
    fused = fuse(
        [{1: as_detections(*MODEL_A)}, {1: as_detections(*MODEL_B)}], {1: (100, 200)}, method,
        iou_threshold=0.55, skip_score_threshold=1e-3, weights=ENSEMBLE_WEIGHTS, sigma=0.5,
    )[1]
    assert fused["labels"].tolist() == [label for _, _, label in expected]
    # ensemble_boxes computes in float32 on boxes divided by the image size: 1e-4 px is its rounding.
    torch.testing.assert_close(
        fused["boxes"], torch.tensor([box for box, _, _ in expected], dtype=torch.float64), rtol=0, atol=1e-4
    )
    torch.testing.assert_close(
        fused["scores"], torch.tensor([score for _, score, _ in expected], dtype=torch.float64), rtol=0, atol=1e-6
    )


def test_eval_cli_writes_detections_and_fuses_an_ensemble(trained, tmp_path):
    _, path, work = trained
    runner = CliRunner()
    out = tmp_path / "dets.json"
    final = str(work / "model_final.pth")
    result = runner.invoke(app, ["eval", "-c", str(path), "--checkpoint", final, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[1:7]] == list(METRICS)  # after "testing ..."
    detections = json.loads(out.read_text())
    assert detections and set(detections[0]) == {"image_id", "category_id", "bbox", "score"}
    result = runner.invoke(  # tiny.yaml: 6 iterations, a checkpoint every 2
        app, ["eval", "-c", str(path), "--ensemble", str(work / "model_0000004.pth"), str(work / "model_final.pth")]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("testing ") == 2 and "AP50" in result.output  # one line per member
    result = runner.invoke(app, ["eval", "-c", str(path), "--ensemble", str(work / "model_final.pth")])
    assert result.exit_code == 2 and "--ensemble: list two or more checkpoints" in result.output


def test_a_checkpoint_of_other_classes_is_refused(trained, tmp_path):
    config, _, work = trained
    state = torch.load(work / "model_final.pth", weights_only=True)
    state["class_names"] = ["a", "b", "c"]
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: trained on other classes than the evaluation split's"):
        evaluate(config, [tmp_path / "other.pth"], log=lambda _: None)
