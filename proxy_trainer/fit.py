"""The proxy's short fit and its held-out evaluation, shared by episodes and by the proxy base.

The fit is the engine's one loop (``detector.engine.loop``) on a seeded shuffle of the training split,
with no hook: progress goes to the ``proxy_trainer`` logger, so a search trial's log shows where an
episode is, and a non-finite loss ends the fit with a message instead of a reward.
"""

from __future__ import annotations

import logging

import torch

from detector.data.coco import CocoDetection
from detector.data.transforms import train_transforms
from detector.engine.config import DatasetConfig, TrainSettings
from detector.engine.cpus import available_cpus
from detector.engine.data import shuffled_batches
from detector.engine.evaluate import detect_single_scale, evaluation_split, score
from detector.engine.loop import NonFiniteLoss, TrainLoop
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


def training_set(dataset: DatasetConfig, train: TrainSettings) -> CocoDetection:
    """The training split, augmented as ``train`` says from a stream seeded by ``train.seed``."""
    return dataset.load(
        "train", train_transforms(train.short_sides, train.max_size, train.flip_probability, seed=train.seed)
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
    loop = TrainLoop(model, train, device, log.info)
    loop.loss_curve = loss_curve
    try:
        loop.run(shuffled_batches(dataset, train.batch_size, train.seed), frozen=frozen)
    except NonFiniteLoss as error:
        log.warning(str(error))
        return str(error)
    return None


def evaluate(model: CascadeRCNN, config: ProxyConfig, device: torch.device) -> dict[str, float]:
    """COCO metrics of ``model`` on the held-out split (its first ``dataset.max_val_images`` images), as the
    full trainer tests at a single scale."""
    val_set, indices = evaluation_split(config.dataset)
    amp, workers = config.train.amp, config.dataset.num_workers
    found = detect_single_scale(model, val_set, indices, config.test, device, amp, workers)
    return score(val_set, found)[1]
