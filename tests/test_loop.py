"""The one training loop (detector.engine.loop) on a two-loss toy model, with a NaN injected from here."""

import pytest
import torch
from torch import nn

from detector.engine.config import TrainSettings
from detector.engine.loop import HookBase, NonFiniteLoss, TrainLoop
from nas_errors import TrainingError

SETTINGS = TrainSettings(iterations=5, batch_size=1, warmup_iterations=0, schedule="cosine", log_every=2, device="cpu")


class ToyLosses(nn.Module):
    """Two losses of one weight, as a detector returns its losses; from call ``nan_at`` on, one is NaN."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(2.0))
        self.calls, self.nan_at = 0, nan_at

    def forward(self, images, image_sizes, targets) -> dict[str, torch.Tensor]:
        poisoned = self.nan_at is not None and self.calls >= self.nan_at
        self.calls += 1
        return {"near_zero": self.weight**2 * (float("nan") if poisoned else 1.0), "near_one": (self.weight - 1) ** 2}


def batches():
    while True:
        yield torch.zeros(1, 3, 4, 4), [(4, 4)], [{}]


class Recorder(HookBase):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def before_train(self, loop: TrainLoop) -> None:
        self.events.append(("before", loop.iteration))

    def after_step(self, loop: TrainLoop) -> None:
        self.events.append(("step", loop.iteration, loop.progress is not None))

    def after_train(self, loop: TrainLoop) -> None:
        self.events.append(("after", loop.iteration))


def test_hooks_see_every_step_and_reports_at_the_first_every_log_every_and_the_last():
    recorder, lines = Recorder(), []
    loop = TrainLoop(ToyLosses(), SETTINGS, torch.device("cpu"), lines.append, [recorder])
    loop.run(batches())
    reported = [True, True, False, True, True]  # iterations 1, 2 and 4 (log_every 2), 5 (the last)
    assert recorder.events == [("before", 0), *(("step", i + 1, r) for i, r in enumerate(reported)), ("after", 5)]
    assert [line.split()[1] for line in lines] == ["1/5", "2/5", "4/5", "5/5"]
    assert "(near_zero " in lines[0] and " near_one " in lines[0] and " ETA " in lines[0]
    assert len(loop.loss_curve) == 5 and loop.loss_curve[-1] < loop.loss_curve[0]


def test_a_non_finite_loss_stops_the_loop_naming_the_iteration_and_every_loss():
    model = ToyLosses(nan_at=2)
    loop = TrainLoop(model, SETTINGS, torch.device("cpu"), lambda _: None, [Recorder()])
    with pytest.raises(NonFiniteLoss, match=r"^non-finite loss nan at iteration 2 \(near_zero=nan, near_one=") as error:
        loop.run(batches())
    assert isinstance(error.value, TrainingError) and loop.iteration == 2 and len(loop.loss_curve) == 2
    assert loop.hooks[0].events[-1] == ("step", 2, True)  # no after_train after a failure
