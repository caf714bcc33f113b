"""The LSTM policy-gradient controller that proposes NAS-FPN cells."""

from controller.config import ControllerConfig
from controller.controller import Controller, Proposal, UpdateStats
from controller.policy import LSTMPolicy

__all__ = ["Controller", "ControllerConfig", "LSTMPolicy", "Proposal", "UpdateStats"]
