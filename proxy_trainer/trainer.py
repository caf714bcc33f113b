"""Train the proxy Cascade R-CNN with a candidate neck and score it on the held-out split.

``train_proxy`` is the search's reward function. For one seed, everything but the searched cell
starts the same whatever the cell (the parts loaded from the proxy base, and a fresh initialisation
of the others that depends only on the seed), and the data order and sampling streams are the same:
two cells trained under one seed differ by their cell, which is what a search compares. A non-finite
loss ends the run with status ``failed`` and the reason, instead of a reward.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from detector.engine.runtime import resolve_device, seed_everything
from detector.modeling import CascadeRCNN, build_detector
from proxy_trainer.base import CELL_PREFIX, ProxyBase, detector_config, load_parts, prepare_base
from proxy_trainer.config import ProxyConfig
from proxy_trainer.fit import evaluate, fit, log, set_threads, training_set
from search_spaces.architecture import Architecture
from search_spaces.cost import neck_cost
from search_spaces.known import fpn


@dataclass
class ProxyResult:
    status: str
    """``completed``, or ``failed`` (non-finite loss; ``error`` says when and which loss)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """AP, AP50, AP75, APs, APm, APl on the held-out split (NaN where a size bucket has no boxes)."""
    neck_flops: int = 0
    """FLOPs of the neck alone at the evaluation size (for cost-aware rewards)."""
    neck_params: int = 0
    detector_params: int = 0
    trainable_params: int = 0
    """Parameters the episode trained (the detector's minus the frozen parts of the base)."""
    iterations: int = 0
    wall_time: float = 0.0
    train_time: float = 0.0
    eval_time: float = 0.0
    loss_curve: list[float] = field(default_factory=list)
    error: str | None = None
    device: str = "cpu"
    threads: int = 0
    """torch CPU threads the episode ran with."""
    base: str | None = None
    """The proxy base's file and its held-out AP, or None (trained from scratch)."""

    @property
    def seconds_per_iteration(self) -> float:
        return self.train_time / max(self.iterations, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds_per_iteration": self.seconds_per_iteration}


def train_proxy(architecture: Architecture, config: ProxyConfig, threads: int | None = None) -> ProxyResult:
    """Train a detector with ``architecture`` as its NAS-FPN cell and evaluate it.

    ``threads``: torch CPU threads, e.g. the CPUs a search trial was given; else ``train.threads``,
    else the CPUs this process may use.
    """
    start = time.perf_counter()
    train = config.train
    device = resolve_device(train.device)
    threads, source = set_threads(threads, train.threads)
    paths = config.dataset.paths()
    base = prepare_base(config, paths) if config.base is not None else None
    dataset = training_set(config.dataset, train)
    model, frozen = _episode_model(config, architecture, dataset.num_classes, base)
    model.to(device)
    neck = config.detector.neck
    cost = neck_cost(architecture, (config.test.short_side,) * 2, width=neck.width, repeats=neck.repeats, norm=neck.norm)
    result = ProxyResult(
        status="completed",
        neck_flops=cost.flops,
        neck_params=cost.params,
        detector_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        device=str(device),
        threads=threads,
        base=None if base is None else f"{base.path} (AP {base.metrics['AP']:.4f})",
    )
    log.info(
        f"episode: {train.iterations} iterations, seed {train.seed}, {threads} threads (from {source}), {device}, "
        f"{result.trainable_params / 1e6:.2f} M of {result.detector_params / 1e6:.2f} M parameters trained, "
        f"base {result.base or 'none (from scratch)'}"
    )
    seed_everything(train.seed)  # the same sampling streams whatever the cell
    train_start = time.perf_counter()
    failure = fit(model, dataset, train, device, result.loss_curve, frozen)
    result.iterations = len(result.loss_curve)
    result.train_time = time.perf_counter() - train_start
    if failure is not None:
        result.status, result.error = "failed", failure
    else:
        eval_start = time.perf_counter()
        result.metrics = evaluate(model, config, device)
        result.eval_time = time.perf_counter() - eval_start
        log.info(f"episode: AP {result.metrics['AP']:.4f} AP50 {result.metrics['AP50']:.4f}, eval {result.eval_time:.1f} s")
    result.wall_time = time.perf_counter() - start
    return result


def _episode_model(
    config: ProxyConfig, architecture: Architecture, num_classes: int, base: ProxyBase | None
) -> tuple[CascadeRCNN, tuple[nn.Module, ...]]:
    """The episode's detector and its frozen parts. Parts not loaded from the base are copied from a
    detector built under the same seed with a fixed cell, so their start does not depend on the cell."""
    detector, seed = config.detector, config.train.seed
    loaded = config.base.load if base is not None else ()
    frozen_parts = config.base.freeze if base is not None else ()
    if "backbone" in loaded:
        backbone = {"weights": None} | ({"frozen_stages": 5} if "backbone" in frozen_parts else {})
        detector = detector.model_copy(update={"backbone": detector.backbone.model_copy(update=backbone)})
    seed_everything(seed)
    shared = build_detector(detector_config(detector, fpn(detector.neck.levels), num_classes)).state_dict()
    seed_everything(seed)
    model = build_detector(detector_config(detector, architecture, num_classes))
    model.load_state_dict({k: v for k, v in shared.items() if not k.startswith(CELL_PREFIX)}, strict=False)
    if base is not None:
        load_parts(model, base, loaded)
    frozen = tuple(getattr(model, part) for part in frozen_parts)
    for module in frozen:
        module.requires_grad_(False)
    return model, frozen
