"""The full detector trainer: ``train(config, work_dir)`` and its exact resume.

The engine's one loop (``detector.engine.loop``) with the full recipe's hooks: checkpoints every
``checkpoint_every`` iterations and at the end, TensorBoard scalars, data parallelism under
``torchrun``. A resumed run restores model, optimizer, scheduler, scaler and every process's RNG
states, and restarts the sampler's stream (a pure function of the seed) where it stopped, so on the
CPU it reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detector.engine import distributed as dist
from detector.engine.checkpoints import (
    FINAL,
    InitReport,
    init_from_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    periodic_name,
    save_checkpoint,
)
from detector.engine.config import DetectorTrainingConfig
from detector.engine.data import build_train_loader
from detector.engine.loop import HookBase, Log, TrainLoop
from detector.engine.model import detector_config
from detector.engine.runtime import capture_rng_state, resolve_device, restore_rng_state, seed_everything
from detector.modeling import build_detector
from nas_errors import UserError

# Settings a resumed run must share with the run it continues, or it would not continue it.
_RESUME_FIXED = ("dataset.sampler", "train.batch_size", "train.seed", "train.short_sides", "train.max_size")


@dataclass
class TrainResult:
    iterations: int
    """Iterations completed in all (the schedule's length once finished)."""
    start_iteration: int
    """Where this call started (non-zero after a resume)."""
    checkpoint: Path
    """The final checkpoint."""
    loss_curve: list[float] = field(default_factory=list)
    """Total loss per iteration since the start of training, this process's; the history before a
    resume is the first process's, as saved in the checkpoint."""
    images_per_second: float = 0.0
    """Training throughput of this call over all processes."""
    init_report: InitReport | None = None


def train(config: DetectorTrainingConfig, work_dir: Path, resume: bool = False, log: Log = print) -> TrainResult:
    """Train ``config``'s detector into ``work_dir`` (checkpoints, TensorBoard logs); with ``resume``,
    continue from the latest checkpoint there. Under ``torchrun`` every process calls this."""
    device = resolve_device(config.train.device)
    joined = dist.init_from_env(config.train.distributed.backend, device)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
        torch.cuda.set_device(device)
    try:
        return _Run(config, Path(work_dir), device, log if dist.is_main() else _silent).run(resume)
    finally:
        if joined:
            dist.shutdown()


def _silent(_: str) -> None:
    """Only the first process prints."""


class _Run:
    def __init__(self, config: DetectorTrainingConfig, work_dir: Path, device: torch.device, log: Log) -> None:
        self.config = config
        self.work_dir = work_dir
        self.device = device
        self.log = log
        self.rank, self.world_size = dist.rank(), dist.world_size()

    def run(self, resume: bool) -> TrainResult:
        config, train = self.config, self.config.train
        if train.threads is not None:
            torch.set_num_threads(train.threads)
        seed_everything(train.seed)
        dataset = config.dataset.load("train")
        self.dataset = dataset
        model = build_detector(detector_config(config, dataset.num_classes)).to(self.device)
        self.model = model
        checkpoint = self._resume_state() if resume else None
        checkpointer = _Checkpointer(self)
        hooks: list[HookBase] = [_TensorBoard(self.work_dir), checkpointer]
        if checkpoint is not None:
            hooks.append(_RestoreRng(checkpoint["rng"][self.rank]))  # last: setting up the others may draw
        loop = self.loop = TrainLoop(model, train, self.device, self.log, hooks)
        init_report = self._start_from(checkpoint)
        start = loop.iteration
        ddp = dist.wrap_model(model, self.device, train.distributed.sync_bn)
        result = TrainResult(start, start, self.work_dir / FINAL, loop.loss_curve, init_report=init_report)
        if start >= train.iterations:
            self.log(f"already trained {start} of {train.iterations} iterations; nothing to do")
            result.checkpoint = latest_checkpoint(self.work_dir) or result.checkpoint
            return result
        self.log(
            f"training {start} -> {train.iterations} iterations on {self.world_size} process(es), {self.device}, "
            f"{len(dataset)} images, {dataset.num_classes} classes, sampler {config.dataset.sampler.kind}"
        )
        loader = build_train_loader(config, dataset, self.rank, self.world_size, start)
        loop.run(iter(loader), forward=ddp)
        result.iterations, result.checkpoint = loop.iteration, checkpointer.last
        result.images_per_second = loop.images_per_second
        return result

    def _start_from(self, checkpoint: dict[str, Any] | None) -> InitReport | None:
        """Model and loop as a resumed ``checkpoint`` left them, else the weights of ``train.init_from``."""
        train = self.config.train
        if checkpoint is not None:
            self.model.load_state_dict(checkpoint["model"])
            self.loop.load_state_dict(checkpoint)
            return None
        if train.init_from is None:
            return None
        report = init_from_checkpoint(
            self.model, train.init_from, self.dataset.class_names, train.init_classes, train.init_class_map
        )
        for line in report.lines():
            self.log(line)
        return report

    # -- resume --------------------------------------------------------------------------------------

    def _resume_state(self) -> dict[str, Any] | None:
        path = latest_checkpoint(self.work_dir)
        if path is None:
            self.log(f"resume: no checkpoint in {self.work_dir}; starting from the beginning")
            return None
        state = load_checkpoint(path)
        self._check_resumable(path, state)
        self.log(f"resume: continuing from {path} (iteration {state['iteration']})")
        return state

    def _check_resumable(self, path: Path, state: dict[str, Any]) -> None:
        if state["class_names"] != self.dataset.class_names:
            raise UserError(f"{path}: trained on other classes than this config's training set")
        if state["world_size"] != self.world_size:
            raise UserError(
                f"{path}: written by {state['world_size']} process(es); resume with the same number, "
                f"not {self.world_size}, to continue the same sample stream"
            )
        now = self.config.model_dump(mode="json")
        for dotted in _RESUME_FIXED:
            before, after = _lookup(state["config"], dotted), _lookup(now, dotted)
            if before != after:
                raise UserError(f"{path}: {dotted} was {before}, the config now says {after}; a resume keeps it")

    def save(self, name: str) -> Path:
        """Write a checkpoint of the loop's state (every process calls this; the first writes)."""
        rng = dist.all_gather_objects(capture_rng_state())
        path = self.work_dir / name
        if dist.is_main():
            state = {
                "model": self.model.state_dict(),
                **self.loop.state_dict(),
                "rng": rng,
                "world_size": self.world_size,
                "class_names": self.dataset.class_names,
                "category_ids": [c["id"] for c in self.dataset.categories],
                "config": self.config.model_dump(mode="json"),
            }
            path = save_checkpoint(self.work_dir, name, state, self.config.train.keep_checkpoints)
            self.log(f"checkpoint: {path}")
        dist.barrier()
        return path


class _Checkpointer(HookBase):
    """A checkpoint every ``checkpoint_every`` iterations and the final one at the end."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.last = run.work_dir / FINAL

    def after_step(self, loop: TrainLoop) -> None:
        if loop.iteration == loop.train.iterations:
            self.last = self.run.save(FINAL)
        elif loop.iteration % self.run.config.train.checkpoint_every == 0:
            self.last = self.run.save(periodic_name(loop.iteration))


class _TensorBoard(HookBase):
    """The loop's reports as TensorBoard scalars, written by the first process into ``work_dir/tensorboard``."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir, self.writer = work_dir, None

    def before_train(self, loop: TrainLoop) -> None:
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to import

            self.writer = SummaryWriter(str(self.work_dir / "tensorboard"))

    def after_step(self, loop: TrainLoop) -> None:
        progress = loop.progress
        if self.writer is None or progress is None:
            return
        done = progress.iteration
        self.writer.add_scalar("loss/total", progress.loss, done)
        for name, value in progress.losses.items():
            self.writer.add_scalar(f"loss/{name}", value, done)
        self.writer.add_scalar("lr", progress.learning_rate, done)
        self.writer.add_scalar("images_per_second", progress.images_per_second, done)
        if progress.grad_norm is not None:
            self.writer.add_scalar("grad_norm", progress.grad_norm, done)

    def after_train(self, loop: TrainLoop) -> None:
        if self.writer is not None:
            self.writer.close()


class _RestoreRng(HookBase):
    """A resume's RNG states, restored just before its first step."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def before_train(self, loop: TrainLoop) -> None:
        restore_rng_state(self.state)


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data[key]
    return data
