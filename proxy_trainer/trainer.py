"""Train the proxy Cascade R-CNN with a candidate neck and score it on the held-out split.

``train_proxy`` is the search's reward function: SGD with linear warm-up and cosine decay, AMP on
CUDA, gradient clipping, seeded and deterministic on the CPU. A non-finite loss ends the run with
status ``failed`` and the reason, instead of a reward.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch

from detector.data import CocoDetection, collate_padded, train_transforms
from detector.engine.runtime import resolve_device, seed_everything
from detector.engine.schedule import lr_factor
from detector.engine.step import apply_gradients, compute_losses, loss_summary
from detector.evaluation import coco_results_by_image, evaluate_detections
from detector.inference import detect, view_transform
from detector.modeling import CascadeRCNN
from proxy_trainer.config import ProxyConfig
from proxy_trainer.data import DatasetPaths, prepare_dataset
from search_spaces.architecture import Architecture
from search_spaces.cost import neck_cost


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
    iterations: int = 0
    wall_time: float = 0.0
    train_time: float = 0.0
    eval_time: float = 0.0
    loss_curve: list[float] = field(default_factory=list)
    error: str | None = None
    device: str = "cpu"

    @property
    def seconds_per_iteration(self) -> float:
        return self.train_time / max(self.iterations, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds_per_iteration": self.seconds_per_iteration}


def train_proxy(architecture: Architecture, config: ProxyConfig) -> ProxyResult:
    """Train a detector with ``architecture`` as its NAS-FPN cell from scratch and evaluate it."""
    start = time.perf_counter()
    train = config.train
    device = resolve_device(train.device)
    if train.threads is not None:
        torch.set_num_threads(train.threads)
    seed_everything(train.seed)
    paths = prepare_dataset(config.dataset)
    train_set = CocoDetection(
        paths.train_annotations,
        paths.train_images,
        transforms=train_transforms(train.train_short_sides, train.train_max_size, train.flip_probability, seed=train.seed),
        train=True,
    )
    detector_config = config.detector.model_copy(
        update={
            "num_classes": train_set.num_classes,
            "neck": config.detector.neck.model_copy(update={"architecture": architecture.to_dict()}),
        }
    )
    model = CascadeRCNN(detector_config).to(device)
    neck = detector_config.neck
    size = (train.eval_short_side, train.eval_short_side)
    cost = neck_cost(architecture, size, width=neck.width, repeats=neck.repeats, norm=neck.norm)
    result = ProxyResult(
        status="completed",
        neck_flops=cost.flops,
        neck_params=cost.params,
        detector_params=sum(p.numel() for p in model.parameters()),
        device=str(device),
    )

    train_start = time.perf_counter()
    failure = _train(model, train_set, config, device, result)
    result.train_time = time.perf_counter() - train_start
    if failure is not None:
        result.status, result.error = "failed", failure
    else:
        eval_start = time.perf_counter()
        result.metrics = _evaluate(model, config, paths, device)
        result.eval_time = time.perf_counter() - eval_start
    result.wall_time = time.perf_counter() - start
    return result


def _train(
    model: CascadeRCNN, dataset: CocoDetection, config: ProxyConfig, device: torch.device, result: ProxyResult
) -> str | None:
    """Run the schedule; returns the failure message of a non-finite loss, else None."""
    train = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=train.learning_rate, momentum=train.momentum, weight_decay=train.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: learning_rate_factor(it, config))
    scaler = torch.amp.GradScaler("cuda", enabled=train.amp and device.type == "cuda")
    batches = _batches(dataset, train.batch_size, train.seed)
    model.train()
    for iteration in range(train.iterations):
        losses = compute_losses(model, next(batches), device, train.amp)
        loss = sum(losses.values())
        if train.inject_nonfinite_loss_at == iteration:
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            return f"non-finite loss {float(loss.detach())} at iteration {iteration} ({loss_summary(losses)})"
        apply_gradients(loss, optimizer, scaler, params, train.grad_clip)
        scheduler.step()
        result.loss_curve.append(float(loss.detach()))
        result.iterations = iteration + 1
    return None


def learning_rate_factor(iteration: int, config: ProxyConfig) -> float:
    """Linear warm-up from ``warmup_factor``, then cosine decay to zero at the last iteration."""
    train = config.train
    return lr_factor(iteration, train.iterations, train.warmup_iterations, train.warmup_factor, "cosine")


def _evaluate(model: CascadeRCNN, config: ProxyConfig, paths: DatasetPaths, device: torch.device) -> dict[str, float]:
    train = config.train
    val_set = CocoDetection(paths.val_annotations, paths.val_images, train=False)
    indices = list(range(len(val_set)))[: config.dataset.max_val_images]
    transform = view_transform(train.eval_short_side, train.eval_max_size)
    found = detect(model, val_set, indices, transform, train.eval_batch_size, device, train.amp)
    detections = coco_results_by_image(found, val_set.label_to_category_id)
    return evaluate_detections(val_set.coco, detections, list(found))


def _batches(dataset: CocoDetection, batch_size: int, seed: int) -> Iterator[tuple]:
    """Endless shuffled batches, reshuffled every epoch from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(dataset))
    while True:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate_padded([dataset[i] for i in order[start : start + batch_size]])
