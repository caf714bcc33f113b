import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from detector.data.coco import CocoDetection
from detector.engine import DetectorTrainingConfig, train
from detector.engine.evaluate import evaluate, load_for_testing
from detector.evaluation import METRICS
from detector.inference import detect, detect_tta, fuse, view_transform
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
    plain = detect(model, dataset, indices, view_transform(64, 96), 3, torch.device("cpu"))
    merged = detect_tta(model, dataset, indices, [64], 96, False, 1000, 3, torch.device("cpu"))
    assert plain.keys() == merged.keys() and sum(len(d["scores"]) for d in plain.values()) > 0
    for image_id in plain:
        a, b = by_score(plain[image_id]), by_score(merged[image_id])
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])


def test_flipped_view_maps_back_to_the_original_image(trained):
    config, _, work = trained
    dataset = val_set(config)
    model = load_for_testing(config, work / "model_final.pth", dataset.class_names)
    found = detect(model, dataset, [0, 1], view_transform(64, 96, flip=True), 2, torch.device("cpu"))
    for image_id, image in found.items():
        info = dataset.coco.imgs[image_id]
        boxes = image["boxes"]
        assert len(boxes) > 0
        assert (boxes[:, 0] >= -1e-6).all() and (boxes[:, 2] <= info["width"] + 1e-6).all()
        assert (boxes[:, 2] > boxes[:, 0]).all()


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
        assert set(result.metrics) == set(METRICS) and result.num_images == 6
        assert all(0.0 <= value <= 1.0 for value in result.metrics.values() if not math.isnan(value))
        assert 0 < len(result.detections) <= 6 * 100
    assert single.detections != augmented.detections


def test_ensemble_of_a_model_with_itself_keeps_its_boxes(trained):
    config, _, work = trained
    dataset = val_set(config)
    model = load_for_testing(config, work / "model_final.pth", dataset.class_names)
    found = detect(model, dataset, list(range(len(dataset))), view_transform(64, 96), 3, torch.device("cpu"))
    sizes = {i: (dataset.coco.imgs[i]["height"], dataset.coco.imgs[i]["width"]) for i in found}
    for method in ("wbf", "voting"):
        fused = fuse([found, found], sizes, method, iou_threshold=0.55)
        for image_id, image in found.items():
            a, b = by_score(image), by_score(fused[image_id])
            assert torch.equal(a["labels"], b["labels"]), method
            torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)
            torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-6)
    soft = fuse([found, found], sizes, "soft_nms", iou_threshold=0.5, skip_score_threshold=1e-3)
    assert all(len(soft[i]["scores"]) >= len(found[i]["scores"]) for i in found)
    with pytest.raises(ValueError, match="test.ensemble.weights: 1 weights for 2 models"):
        fuse([found, found], sizes, "wbf", 0.55, weights=[1.0])


def test_eval_cli_writes_detections_and_fuses_an_ensemble(trained, tmp_path):
    _, path, work = trained
    runner = CliRunner()
    out = tmp_path / "dets.json"
    final = str(work / "model_final.pth")
    result = runner.invoke(app, ["eval", "-c", str(path), "--checkpoint", final, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[1:7]] == list(METRICS)
    detections = json.loads(out.read_text())
    assert detections and set(detections[0]) == {"image_id", "category_id", "bbox", "score"}
    result = runner.invoke(
        app, ["eval", "-c", str(path), "--ensemble", str(work / "model_0000004.pth"), str(work / "model_final.pth")]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("testing ") == 2 and "AP50" in result.output
    result = runner.invoke(app, ["eval", "-c", str(path), "--ensemble", str(work / "model_final.pth")])
    assert result.exit_code == 2 and "--ensemble: list two or more checkpoints" in result.output


def test_a_checkpoint_of_other_classes_is_refused(trained, tmp_path):
    config, _, work = trained
    state = torch.load(work / "model_final.pth", weights_only=True)
    state["class_names"] = ["a", "b", "c"]
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: trained on other classes than the evaluation split's"):
        evaluate(config, [tmp_path / "other.pth"], log=lambda _: None)
