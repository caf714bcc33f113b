"""Testing on the evaluation split, scored with pycocotools: ``nas eval`` (a checkpoint or an ensemble,
single scale or TTA) and the proxy's reward (a model in memory, single scale)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from detector.coco_eval import coco_results_by_image, evaluate_detections
from detector.config import DetectorConfig
from detector.data.coco import CocoDetection
from detector.engine.checkpoints import load_checkpoint, model_state
from detector.engine.config import DatasetConfig, DetectorTrainingConfig, TestSettings
from detector.engine.runtime import resolve_device
from detector.inference import Detections, detect, detect_tta, fuse, view_transform
from detector.modeling import CascadeRCNN, build_detector
from nas_errors import UserError

Log = Callable[[str], None]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    """AP, AP50, AP75, APs, APm, APl (NaN where the ground truth has no such object)."""
    detections: list[dict[str, Any]]
    """COCO result dicts, as ``write_detections`` saves them."""
    num_images: int
    seconds: float
    """Wall time of detection and fusion (not of scoring)."""


def evaluate(
    config: DetectorTrainingConfig, checkpoints: Sequence[Path], tta: bool = False, log: Log = print
) -> EvalResult:
    """Detect the evaluation split with each checkpoint (``tta``: multi-scale + flip), fuse several
    checkpoints' detections with ``test.ensemble``, and score them."""
    if not checkpoints:
        raise UserError("checkpoints: give at least one")
    device = resolve_device(config.train.device)
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    dataset, indices = evaluation_split(config.dataset)
    start = time.perf_counter()
    per_model = []
    for path in checkpoints:
        model = load_for_testing(config, path, dataset.class_names).to(device)
        log(f"testing {path} on {len(indices)} images ({'TTA' if tta else 'single scale'})")
        per_model.append(_detect(config, model, dataset, indices, tta, device))
    detections = per_model[0] if len(per_model) == 1 else _fuse(config, per_model, dataset, indices)
    seconds = time.perf_counter() - start
    results, metrics = score(dataset, detections)
    return EvalResult(metrics, results, len(indices), seconds)


def evaluation_split(config: DatasetConfig) -> tuple[CocoDetection, list[int]]:
    """The evaluation split and the indices tested: its first ``max_val_images`` images, else all."""
    dataset = config.load("val")
    return dataset, list(range(len(dataset)))[: config.max_val_images]


def detect_single_scale(
    model: CascadeRCNN,
    dataset: CocoDetection,
    indices: list[int],
    test: TestSettings,
    device: torch.device,
    amp: bool,
    num_workers: int,
) -> dict[int, Detections]:
    transform = view_transform(test.short_side, test.max_size)
    return detect(model, dataset, indices, transform, test.batch_size, device, amp=amp, num_workers=num_workers)


def score(dataset: CocoDetection, detections: dict[int, Detections]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The detections as COCO results, and their metrics against the split's annotations."""
    results = coco_results_by_image(detections, dataset.label_to_category_id)
    return results, evaluate_detections(dataset.coco, results, list(detections))


def load_for_testing(config: DetectorTrainingConfig, path: Path, class_names: list[str]) -> CascadeRCNN:
    """The detector a checkpoint holds, with ``config``'s test-time settings.

    A training checkpoint carries its own detector config, so ensemble members may differ in
    backbone or neck; its cascade ``test_mode`` / weights, RPN test sizes and post-processing are
    replaced by ``config``'s. A bare state dict is taken to be ``config.detector``'s model.
    """
    state = load_checkpoint(path)
    if "config" in state:
        stored = DetectorConfig.model_validate(state["config"]["detector"])
        stored_names = state["class_names"]
    else:
        stored, stored_names = config.detector, None
    if stored_names is not None and list(stored_names) != list(class_names):
        raise UserError(f"{path}: trained on other classes than the evaluation split's")
    wanted = config.detector
    detector = stored.model_copy(
        update={
            "num_classes": len(class_names),
            "cascade": stored.cascade.model_copy(
                update={"test_mode": wanted.cascade.test_mode, "adaptive_weights": wanted.cascade.adaptive_weights}
            ),
            "rpn": stored.rpn.model_copy(
                update={
                    "pre_nms_top_n_test": wanted.rpn.pre_nms_top_n_test,
                    "post_nms_top_n_test": wanted.rpn.post_nms_top_n_test,
                }
            ),
            "postprocess": wanted.postprocess,
        }
    )
    model = build_detector(detector)
    missing, unexpected = model.load_state_dict(model_state(state), strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path}: does not fit the detector config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model


def _detect(
    config: DetectorTrainingConfig,
    model: CascadeRCNN,
    dataset: CocoDetection,
    indices: list[int],
    tta: bool,
    device: torch.device,
) -> dict[int, Detections]:
    test, workers = config.test, config.dataset.num_workers
    if tta:
        return detect_tta(
            model,
            dataset,
            indices,
            short_sides=test.tta.short_sides,
            max_size=test.tta.max_size,
            flip=test.tta.flip,
            detections_per_view=test.tta.detections_per_view,
            batch_size=test.batch_size,
            device=device,
            amp=config.train.amp,
            num_workers=workers,
        )
    return detect_single_scale(model, dataset, indices, test, device, config.train.amp, workers)


def _fuse(
    config: DetectorTrainingConfig,
    per_model: list[dict[int, Detections]],
    dataset: CocoDetection,
    indices: list[int],
) -> dict[int, Detections]:
    ensemble = config.test.ensemble
    infos = [dataset.coco.imgs[dataset.image_ids[i]] for i in indices]
    sizes = {info["id"]: (info["height"], info["width"]) for info in infos}
    return fuse(
        per_model,
        sizes,
        method=ensemble.method,
        iou_threshold=ensemble.iou_threshold,
        skip_score_threshold=ensemble.skip_score_threshold,
        weights=ensemble.weights,
        detections_per_image=ensemble.detections_per_image,
        soft_nms_method=ensemble.soft_nms_method,
        sigma=ensemble.sigma,
    )
