"""The proxy's short fit and its held-out evaluation, shared by episodes and by the proxy base.

SGD with linear warm-up and cosine decay, AMP on CUDA, gradient clipping, seeded data order. Progress
(iteration, loss, learning rate, ETA) goes to the ``proxy_trainer`` logger, so a search trial's log
shows where an episode is; a non-finite loss ends the fit with a message instead of a reward.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

import torch

from detector.coco_eval import coco_results_by_image, evaluate_detections
from detector.data.coco import CocoDetection
from detector.data.prepare import DatasetPaths
from detector.data.transforms import collate_padded, train_transforms
from detector.engine.config import TrainSettings
from detector.engine.cpus import available_cpus
from detector.engine.schedule import lr_factor
from detector.engine.step import apply_gradients, compute_losses, loss_summary
from detector.inference import detect, view_transform
from detector.modeling import CascadeRCNN
from proxy_trainer.config import ProxyConfig

log = logging.getLogger("proxy_trainer")


def set_threads(requested: int | None, configured: int | None) -> tuple[int, str]:
    """Set torch's CPU threads: ``requested`` (a trial's CPUs), else ``configured`` (``train.threads``),
    else the CPUs this process may run on. Returns the count and where it came from."""
    if requested is not None:
        threads, source = requested, "the caller"
    elif configured is not None:
        threads, source = configured, "train.threads"
    else:
        threads, source = available_cpus(), "the CPUs this process may use"
    if threads < 1:
        raise ValueError(f"threads: must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads, source


def training_set(paths: DatasetPaths, train: TrainSettings, objects365_v2_paths: bool = False) -> CocoDetection:
    return CocoDetection(
        paths.train_annotations,
        paths.train_images,
        transforms=train_transforms(train.short_sides, train.max_size, train.flip_probability, seed=train.seed),
        train=True,
        rewrite_objects365_v2_paths=objects365_v2_paths,
    )


def fit(
    model: CascadeRCNN,
    dataset: CocoDetection,
    train: TrainSettings,
    device: torch.device,
    loss_curve: list[float],
    frozen: tuple[torch.nn.Module, ...] = (),
) -> str | None:
    """Train ``model`` for ``train.iterations``, appending each total loss to ``loss_curve``; the
    ``frozen`` modules stay in eval mode. Returns the failure message of a non-finite loss, else None."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=train.learning_rate, momentum=train.momentum, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: learning_rate_factor(it, train))
    scaler = torch.amp.GradScaler("cuda", enabled=train.amp and device.type == "cuda")
    batches = _batches(dataset, train.batch_size, train.seed)
    model.train()
    for module in frozen:
        module.eval()
    start = time.perf_counter()
    for iteration in range(train.iterations):
        losses = compute_losses(model, next(batches), device, train.amp)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            message = f"non-finite loss {float(loss.detach())} at iteration {iteration} ({loss_summary(losses)})"
            log.warning(message)
            return message
        learning_rate = optimizer.param_groups[0]["lr"]
        apply_gradients(loss, optimizer, scaler, params, train.grad_clip)
        scheduler.step()
        loss_curve.append(float(loss.detach()))
        done = iteration + 1
        if iteration == 0 or done % train.log_every == 0 or done == train.iterations:
            log.info(_progress(done, train.iterations, loss_curve[-1], learning_rate, time.perf_counter() - start))
    return None


def _progress(done: int, total: int, loss: float, learning_rate: float, elapsed: float) -> str:
    per_iteration = elapsed / done
    return (
        f"iteration {done}/{total}  loss {loss:.4f}  lr {learning_rate:.4g}  "
        f"{per_iteration:.2f} s/it  ETA {_duration(per_iteration * (total - done))}"
    )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def learning_rate_factor(iteration: int, train: TrainSettings) -> float:
    """Linear warm-up from ``warmup_factor``, then ``train.schedule`` (the proxy's: cosine decay to zero)."""
    return lr_factor(
        iteration, train.iterations, train.warmup_iterations, train.warmup_factor, train.schedule, train.steps, train.gamma
    )


def evaluate(model: CascadeRCNN, config: ProxyConfig, paths: DatasetPaths, device: torch.device) -> dict[str, float]:
    """COCO metrics of ``model`` on the held-out split (its first ``dataset.max_val_images`` images)."""
    dataset, test = config.dataset, config.test
    val_set = CocoDetection(
        paths.val_annotations, paths.val_images, train=False, rewrite_objects365_v2_paths=dataset.objects365_v2_paths
    )
    indices = list(range(len(val_set)))[: dataset.max_val_images]
    transform = view_transform(test.short_side, test.max_size)
    found = detect(
        model, val_set, indices, transform, test.batch_size, device, config.train.amp, num_workers=dataset.num_workers
    )
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
