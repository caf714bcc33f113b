"""Full-size training and testing of the searched detector: ``config``, ``trainer``, ``evaluate``,
``checkpoints``, ``distributed``. Only the config is imported here, so exporting one needs no torch."""

from detector.engine.config import DetectorTrainingConfig

__all__ = ["DetectorTrainingConfig"]
