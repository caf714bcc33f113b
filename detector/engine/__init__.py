"""Training and testing: ``config`` (the vocabulary the proxy shares), ``loop`` (the one training loop),
``trainer`` (the full recipe's hooks), ``evaluate``, ``checkpoints``, ``distributed``. Only the config is
imported here, so exporting one needs no torch."""

from detector.engine.config import DetectorTrainingConfig

__all__ = ["DetectorTrainingConfig"]
