"""Train the proxy Cascade R-CNN with a candidate neck and score it on the held-out split.

``train_proxy`` is the search's reward function: SGD with linear warm-up and cosine decay, AMP on
CUDA, gradient clipping, seeded and deterministic on the CPU. A non-finite loss ends the run with
status ``failed`` and the reason, instead of a reward.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from detector.data import CocoDetection, collate_padded, test_transforms, train_transforms
from detector.evaluation import detections_to_coco, evaluate_detections
from detector.modeling import CascadeRCNN
from proxy_trainer.config import ProxyConfig
from proxy_trainer.data import prepare_dataset
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
    device = _device(train.device)
    if train.threads is not None:
        torch.set_num_threads(train.threads)
    _seed_everything(train.seed)
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
    use_amp = train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    batches = _batches(dataset, train.batch_size, train.seed)
    model.train()
    for iteration in range(train.iterations):
        images, image_sizes, targets = next(batches)
        images = images.to(device)
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=use_amp):
            losses = model(images, image_sizes, targets)
        loss = sum(losses.values())
        if train.inject_nonfinite_loss_at == iteration:
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            parts = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in losses.items())
            return f"non-finite loss {float(loss.detach())} at iteration {iteration} ({parts})"
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if train.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        result.loss_curve.append(float(loss.detach()))
        result.iterations = iteration + 1
    return None


def learning_rate_factor(iteration: int, config: ProxyConfig) -> float:
    """Linear warm-up from ``warmup_factor``, then cosine decay to zero at the last iteration."""
    train = config.train
    if iteration < train.warmup_iterations:
        alpha = iteration / train.warmup_iterations
        return train.warmup_factor * (1 - alpha) + alpha
    span = max(train.iterations - train.warmup_iterations, 1)
    progress = (iteration - train.warmup_iterations) / span
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def _evaluate(model: CascadeRCNN, config: ProxyConfig, paths, device: torch.device) -> dict[str, float]:
    train = config.train
    val_set = CocoDetection(
        paths.val_annotations,
        paths.val_images,
        transforms=test_transforms(train.eval_short_side, train.eval_max_size),
        train=False,
    )
    indices = list(range(len(val_set)))[: config.dataset.max_val_images]
    model.eval()
    detections, image_ids = [], []
    for start in range(0, len(indices), train.eval_batch_size):
        images, image_sizes, targets = collate_padded(
            [val_set[i] for i in indices[start : start + train.eval_batch_size]]
        )
        with torch.autocast(device.type, enabled=train.amp and device.type == "cuda"):
            predictions = model(images.to(device), image_sizes)
        predictions = [{k: v.float().cpu() for k, v in p.items()} for p in predictions]
        detections += detections_to_coco(predictions, targets, val_set.label_to_category_id)
        image_ids += [t["image_id"] for t in targets]
    return evaluate_detections(val_set.coco, detections, image_ids)


def _batches(dataset: CocoDetection, batch_size: int, seed: int) -> Iterator[tuple]:
    """Endless shuffled batches, reshuffled every epoch from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(dataset))
    while True:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate_padded([dataset[i] for i in order[start : start + batch_size]])


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(choice)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
