"""Learning-rate schedules as factors of the base rate, for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

import bisect
import math
from typing import Sequence


def lr_factor(
    iteration: int,
    iterations: int,
    warmup_iterations: int,
    warmup_factor: float,
    schedule: str = "cosine",
    steps: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Linear warm-up from ``warmup_factor`` to 1, then step decay (``gamma`` at each of ``steps``)
    or cosine decay reaching zero at ``iterations``."""
    if iteration < warmup_iterations:
        alpha = iteration / warmup_iterations
        return warmup_factor * (1 - alpha) + alpha
    if schedule == "step":
        return gamma ** bisect.bisect_right(list(steps), iteration)
    if schedule != "cosine":
        raise ValueError(f"schedule: expected 'step' or 'cosine', got {schedule!r}")
    span = max(iterations - warmup_iterations, 1)
    progress = (iteration - warmup_iterations) / span
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
