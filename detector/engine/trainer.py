"""The full detector trainer: ``train(config, work_dir)`` and its exact resume.

SGD with warm-up and a step or cosine schedule, AMP on CUDA, gradient clipping, checkpoints every
``checkpoint_every`` iterations and at the end, data parallelism under ``torchrun``. A resumed run
restores model, optimizer, scheduler, scaler and every process's RNG states, and restarts the
sampler's stream (a pure function of the seed) where it stopped, so on the CPU it reproduces the
uninterrupted run bit for bit.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
from detector.engine.model import detector_config
from detector.engine.runtime import capture_rng_state, resolve_device, restore_rng_state, seed_everything
from detector.engine.schedule import lr_factor
from detector.engine.step import apply_gradients, compute_losses, loss_summary
from detector.modeling import build_detector
from nas_errors import TrainingError, UserError

Log = Callable[[str], None]
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
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=train.learning_rate, momentum=train.momentum, weight_decay=train.weight_decay
        )
        schedule = functools.partial(
            lr_factor,
            iterations=train.iterations,
            warmup_iterations=train.warmup_iterations,
            warmup_factor=train.warmup_factor,
            schedule=train.schedule,
            steps=train.steps,
            gamma=train.gamma,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        scaler = torch.amp.GradScaler("cuda", enabled=train.amp and self.device.type == "cuda")
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler

        checkpoint = self._resume_state() if resume else None
        init_report = None
        if checkpoint is None and train.init_from is not None:
            init_report = init_from_checkpoint(
                model, train.init_from, dataset.class_names, train.init_classes, train.init_class_map
            )
            for line in init_report.lines():
                self.log(line)
        start, loss_curve = self._restore(checkpoint)
        ddp = dist.wrap_model(model, self.device, train.distributed.sync_bn)
        result = TrainResult(start, start, self.work_dir / FINAL, loss_curve, init_report=init_report)
        if start >= train.iterations:
            self.log(f"already trained {start} of {train.iterations} iterations; nothing to do")
            result.checkpoint = latest_checkpoint(self.work_dir) or result.checkpoint
            return result
        self.log(
            f"training {start} -> {train.iterations} iterations on {self.world_size} process(es), {self.device}, "
            f"{len(dataset)} images, {dataset.num_classes} classes, sampler {config.dataset.sampler.kind}"
        )
        self._loop(ddp, params, start, result, None if checkpoint is None else checkpoint["rng"][self.rank])
        return result

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

    def _restore(self, state: dict[str, Any] | None) -> tuple[int, list[float]]:
        """Load a checkpoint's model, optimizer, scheduler and scaler states."""
        if state is None:
            return 0, []
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        return state["iteration"], list(state["loss_curve"])

    # -- the loop ------------------------------------------------------------------------------------

    def _loop(
        self,
        ddp: torch.nn.Module,
        params: list[torch.Tensor],
        start: int,
        result: TrainResult,
        rng_state: dict[str, Any] | None,
    ) -> None:
        train = self.config.train
        loader = build_train_loader(self.config, self.dataset, self.rank, self.world_size, start)
        batches = iter(loader)
        writer = self._writer()
        meter = _Meter(train.iterations, start, train.batch_size * self.world_size)
        ddp.train()
        if rng_state is not None:  # just before the first step: setting up DDP and logging may draw from it
            restore_rng_state(rng_state)
        for iteration in range(start, train.iterations):
            losses = compute_losses(ddp, next(batches), self.device, train.amp)
            loss = sum(losses.values())
            if not dist.all_true(bool(torch.isfinite(loss))):
                raise TrainingError(
                    f"non-finite loss at iteration {iteration} on some process (here: {loss_summary(losses)})"
                )
            grad_norm = apply_gradients(loss, self.optimizer, self.scaler, params, train.grad_clip)
            self.scheduler.step()
            done = iteration + 1
            result.loss_curve.append(float(loss.detach()))
            result.iterations = done
            if done % train.log_every == 0 or done == train.iterations:
                self._report(done, losses, grad_norm, meter, writer)
            if done == train.iterations:
                result.checkpoint = self._save(FINAL, done, result.loss_curve)
            elif done % train.checkpoint_every == 0:
                self._save(periodic_name(done), done, result.loss_curve)
        result.images_per_second = meter.images_per_second()
        if writer is not None:
            writer.close()

    def _writer(self):
        if not dist.is_main():
            return None
        from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to import

        return SummaryWriter(str(self.work_dir / "tensorboard"))

    def _report(
        self, done: int, losses: dict[str, torch.Tensor], grad_norm: float | None, meter: "_Meter", writer
    ) -> None:
        values = {name: float(value.detach()) for name, value in losses.items()}
        values = dist.mean_over_processes(values)
        total = sum(values.values())
        lr = self.optimizer.param_groups[0]["lr"]
        speed, eta = meter.update(done)
        parts = " ".join(f"{name} {value:.3f}" for name, value in values.items())
        self.log(
            f"iter {done}/{self.config.train.iterations}  loss {total:.4f} ({parts})  lr {lr:.5g}  "
            f"{speed:.2f} img/s  eta {_duration(eta)}"
        )
        if writer is not None:
            writer.add_scalar("loss/total", total, done)
            for name, value in values.items():
                writer.add_scalar(f"loss/{name}", value, done)
            writer.add_scalar("lr", lr, done)
            writer.add_scalar("images_per_second", speed, done)
            if grad_norm is not None:
                writer.add_scalar("grad_norm", grad_norm, done)

    def _save(self, name: str, done: int, loss_curve: list[float]) -> Path:
        rng = dist.all_gather_objects(capture_rng_state())
        path = self.work_dir / name
        if dist.is_main():
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "iteration": done,
                "rng": rng,
                "world_size": self.world_size,
                "loss_curve": list(loss_curve),
                "class_names": self.dataset.class_names,
                "category_ids": [c["id"] for c in self.dataset.categories],
                "config": self.config.model_dump(mode="json"),
            }
            path = save_checkpoint(self.work_dir, name, state, self.config.train.keep_checkpoints)
            self.log(f"checkpoint: {path}")
        dist.barrier()
        return path


class _Meter:
    """Images per second since the last report and the time left at the rate so far."""

    def __init__(self, iterations: int, start: int, images_per_iteration: int) -> None:
        self.iterations, self.start, self.images = iterations, start, images_per_iteration
        self.begin = self.last = time.perf_counter()
        self.last_iteration = start

    def update(self, done: int) -> tuple[float, float]:
        now = time.perf_counter()
        speed = (done - self.last_iteration) * self.images / max(now - self.last, 1e-9)
        self.last, self.last_iteration = now, done
        per_iteration = (now - self.begin) / max(done - self.start, 1)
        return speed, per_iteration * (self.iterations - done)

    def images_per_second(self) -> float:
        return (self.last_iteration - self.start) * self.images / max(self.last - self.begin, 1e-9)


def _duration(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    days, rest = divmod(seconds, 86_400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data[key]
    return data
