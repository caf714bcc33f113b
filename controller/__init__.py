"""The LSTM policy-gradient controller that proposes NAS-FPN cells.

Only the config is imported here, so reading a search config needs no torch; the controller itself is
``controller.controller.Controller`` and its policy ``controller.policy.LSTMPolicy``.
"""

from controller.config import ControllerConfig

__all__ = ["ControllerConfig"]
