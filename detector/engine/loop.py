"""The one training loop, shared by the full trainer and the proxy's short fit.

SGD with linear warm-up and a step or cosine schedule, AMP on CUDA, gradient clipping, a stop at the
first non-finite loss and a progress line (iteration, losses, learning rate, speed, ETA) at the first
step, every ``log_every`` steps and the last. What differs between the recipes hangs on hooks, as in
detectron2's ``TrainerBase``: the full trainer's checkpoints, TensorBoard and exact resume; the proxy
adds none. Under ``torchrun`` every process runs the loop and every hook (they may use collectives).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from detector.engine import distributed as dist
from detector.engine.config import TrainSettings
from detector.engine.schedule import lr_factor
from detector.engine.step import apply_gradients, compute_losses, loss_summary
from nas_errors import TrainingError

Log = Callable[[str], None]


class NonFiniteLoss(TrainingError):
    """A step's loss was NaN or infinite; the message names the iteration and every loss."""


class HookBase:
    """What a recipe adds to the loop; each method sees the loop and does nothing by default."""

    def before_train(self, loop: TrainLoop) -> None:
        """Just before the first step, after everything else is set up."""

    def after_step(self, loop: TrainLoop) -> None:
        """After each step: ``loop.iteration`` steps are done; ``loop.progress`` is set at report steps."""

    def after_train(self, loop: TrainLoop) -> None:
        """After the last step (not after a failure)."""


@dataclass
class Progress:
    """One report: the step's losses averaged over processes, its learning rate and the speed so far."""

    iteration: int
    iterations: int
    losses: dict[str, float]
    learning_rate: float
    grad_norm: float | None
    seconds_per_iteration: float
    images_per_second: float
    """Since the previous report."""
    eta: float

    @property
    def loss(self) -> float:
        return sum(self.losses.values())

    def line(self) -> str:
        parts = " ".join(f"{name} {value:.3f}" for name, value in self.losses.items())
        return (
            f"iteration {self.iteration}/{self.iterations}  loss {self.loss:.4f} ({parts})  "
            f"lr {self.learning_rate:.4g}  {self.seconds_per_iteration:.2f} s/it  "
            f"{self.images_per_second:.2f} img/s  ETA {duration(self.eta)}"
        )


class TrainLoop:
    """Trains ``model``'s parameters that require gradients for ``train.iterations`` steps.

    The optimizer, scheduler and AMP scaler are made here; ``state_dict`` / ``load_state_dict`` carry
    them with the iteration and the loss history, for a checkpoint and its exact resume.
    """

    def __init__(
        self, model: nn.Module, train: TrainSettings, device: torch.device, log: Log, hooks: Sequence[HookBase] = ()
    ) -> None:
        self.model, self.train, self.device, self.log, self.hooks = model, train, device, log, tuple(hooks)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            self.params, lr=train.learning_rate, momentum=train.momentum, weight_decay=train.weight_decay
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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = torch.amp.GradScaler("cuda", enabled=train.amp and device.type == "cuda")
        self.iteration = 0
        """Steps done."""
        self.loss_curve: list[float] = []
        """Total loss of every step done, this process's."""
        self.progress: Progress | None = None
        self.images_per_second = 0.0
        """Over the steps of the last ``run``, all processes."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "loss_curve": list(self.loss_curve),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.loss_curve = state["iteration"], list(state["loss_curve"])

    def run(
        self, batches: Iterator[Any], forward: nn.Module | None = None, frozen: Sequence[nn.Module] = ()
    ) -> None:
        """Step from ``iteration`` to the end on ``batches``; ``forward`` computes the losses (e.g. the
        DDP wrapper of ``model``), the ``frozen`` modules stay in eval mode. Raises ``NonFiniteLoss``."""
        train = self.train
        forward = forward or self.model
        forward.train()
        for module in frozen:
            module.eval()
        meter = _Meter(train.iterations, self.iteration, train.batch_size * dist.world_size())
        first = self.iteration + 1
        for hook in self.hooks:
            hook.before_train(self)
        for iteration in range(self.iteration, train.iterations):
            losses = compute_losses(forward, next(batches), self.device, train.amp)
            loss = sum(losses.values())
            if not dist.all_true(bool(torch.isfinite(loss))):
                raise NonFiniteLoss(_non_finite(loss, iteration, losses))
            learning_rate = self.optimizer.param_groups[0]["lr"]
            grad_norm = apply_gradients(loss, self.optimizer, self.scaler, self.params, train.grad_clip)
            self.scheduler.step()
            self.iteration = done = iteration + 1
            self.loss_curve.append(float(loss.detach()))
            self.progress = None
            if done == first or done % train.log_every == 0 or done == train.iterations:
                self.progress = _progress(done, train.iterations, losses, learning_rate, grad_norm, meter)
                self.log(self.progress.line())
            for hook in self.hooks:
                hook.after_step(self)
        self.images_per_second = meter.images_per_second()
        for hook in self.hooks:
            hook.after_train(self)


def _non_finite(loss: torch.Tensor, iteration: int, losses: dict[str, torch.Tensor]) -> str:
    if dist.world_size() == 1:
        return f"non-finite loss {float(loss.detach())} at iteration {iteration} ({loss_summary(losses)})"
    return f"non-finite loss at iteration {iteration} on some process (here: {loss_summary(losses)})"


def _progress(
    done: int,
    iterations: int,
    losses: dict[str, torch.Tensor],
    learning_rate: float,
    grad_norm: float | None,
    meter: _Meter,
) -> Progress:
    values = dist.mean_over_processes({name: float(value.detach()) for name, value in losses.items()})
    speed, per_iteration = meter.update(done)
    return Progress(
        done, iterations, values, learning_rate, grad_norm, per_iteration, speed, per_iteration * (iterations - done)
    )


class _Meter:
    """Images per second since the last report and seconds per iteration so far."""

    def __init__(self, iterations: int, start: int, images_per_iteration: int) -> None:
        self.iterations, self.start, self.images = iterations, start, images_per_iteration
        self.begin = self.last = time.perf_counter()
        self.last_iteration = start

    def update(self, done: int) -> tuple[float, float]:
        now = time.perf_counter()
        speed = (done - self.last_iteration) * self.images / max(now - self.last, 1e-9)
        self.last, self.last_iteration = now, done
        return speed, (now - self.begin) / max(done - self.start, 1)

    def images_per_second(self) -> float:
        return (self.last_iteration - self.start) * self.images / max(self.last - self.begin, 1e-9)


def duration(seconds: float) -> str:
    """``HH:MM:SS``, with days in front when there are any."""
    seconds = int(math.ceil(seconds))
    days, rest = divmod(seconds, 86_400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text
