"""The proxy task: train a small Cascade R-CNN with a candidate neck; its held-out AP is the reward.

Only the config is imported here, so reading a search config needs no torch; the training is
``proxy_trainer.trainer.train_proxy``.
"""

from proxy_trainer.config import PROXY_PRESET, BaseConfig, ProxyConfig

__all__ = ["PROXY_PRESET", "BaseConfig", "ProxyConfig"]
