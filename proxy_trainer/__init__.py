"""The proxy task: train a small Cascade R-CNN with a candidate neck; its held-out AP is the reward."""

from proxy_trainer.config import BaseConfig, DatasetConfig, ProxyConfig, SyntheticDataConfig, TrainConfig
from proxy_trainer.trainer import ProxyResult, train_proxy

__all__ = [
    "BaseConfig",
    "DatasetConfig",
    "ProxyConfig",
    "ProxyResult",
    "SyntheticDataConfig",
    "TrainConfig",
    "train_proxy",
]
