"""Full-size training and testing of the searched detector: config, trainer, checkpoints, distribution."""

from detector.engine.config import DetectorTrainingConfig
from detector.engine.model import detector_config
from detector.engine.trainer import TrainResult, train

__all__ = ["DetectorTrainingConfig", "TrainResult", "detector_config", "train"]
