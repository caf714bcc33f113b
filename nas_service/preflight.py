"""Checks before a search's first episode: what would fail every episode fails the search at once.

A broken annotation file, a dataset with no usable image, a reward split without boxes (AP would be
undefined) or a trial that no node of the cluster can hold would otherwise cost the whole budget, one
failed episode after another, or wait for ever. Each refusal names the file and record, or the
setting and what the cluster has.
"""

from __future__ import annotations

from typing import Any

from detector.data.coco import CocoDetection, DatasetError
from detector.engine.config import DatasetConfig
from nas_errors import LaunchError
from nas_service.search_config import ResourcesConfig


def check_dataset(config: DatasetConfig) -> None:
    """Parse both splits, decode every image an episode reads, and require boxes in the reward split.

    The synthetic dataset is generated here if it is missing, once, instead of by the first trials.
    """
    train = config.load("train")  # as an episode loads it (Objects365 v2 paths rewritten, if asked)
    _require_images(train, "training")
    val = config.load("val")
    _require_images(val, "reward")
    scored = range(min(len(val), config.max_val_images or len(val)))
    labels = val.labels_per_image()
    if sum(len(labels[i]) for i in scored) == 0:
        raise DatasetError(
            f"{val.ann_file}: the reward split has no boxes in the {len(scored)} images it scores, so AP is "
            "undefined; choose a split with annotated objects (or raise dataset.max_val_images)"
        )
    for dataset, indices in ((train, range(len(train))), (val, scored)):
        for index in indices:
            dataset[index]  # decodes the image, and checks its size against the annotation file


def _require_images(dataset: CocoDetection, split: str) -> None:
    if len(dataset) > 0:
        return
    report = dataset.report
    raise DatasetError(
        f"{dataset.ann_file}: no image of the {split} split can be read from {dataset.image_root}: "
        f"{report.num_missing_images} missing (e.g. {report.missing_examples}), "
        f"{report.num_unreadable_images} empty or not images (e.g. {report.unreadable_examples})"
    )


def check_resources(resources: ResourcesConfig, nodes: list[dict[str, Any]]) -> None:
    """A trial must fit on one live node of the cluster (``ray.nodes()``), or it would wait for ever."""
    cpus, gpus = resources.cpus_per_trial, resources.gpus_per_trial
    alive = [node["Resources"] for node in nodes if node["Alive"]]
    if any(node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus for node in alive):
        return
    have = ", ".join(f"{node.get('CPU', 0):g} CPUs and {node.get('GPU', 0):g} GPUs" for node in alive) or "none"
    raise LaunchError(
        f"resources: a trial needs {cpus:g} CPUs and {gpus:g} GPUs on one node (resources.cpus_per_trial, "
        f"resources.gpus_per_trial), but no node of the Ray cluster has them (its nodes: {have}); lower "
        "them or add a node that has them"
    )
