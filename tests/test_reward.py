import math

import pytest

from nas_service.search_config import RewardConfig


def test_plain_reward_is_the_metric():
    metrics = {"AP": 0.31, "AP50": 0.52}
    assert RewardConfig().reward(metrics, neck_flops=10**9) == 0.31
    assert RewardConfig(metric="AP50").reward(metrics, neck_flops=10**9) == 0.52


def test_cost_aware_reward_follows_mnasnet():
    config = RewardConfig(flops_target=2e9, flops_weight=-0.07)
    assert config.reward({"AP": 0.4}, neck_flops=2 * 10**9) == pytest.approx(0.4)
    cheap, costly = config.reward({"AP": 0.4}, neck_flops=10**9), config.reward({"AP": 0.4}, neck_flops=4 * 10**9)
    assert cheap == pytest.approx(0.4 * 0.5**-0.07) and costly == pytest.approx(0.4 * 2**-0.07)
    assert cheap > 0.4 > costly


def test_non_finite_metric_is_rejected():
    with pytest.raises(ValueError, match="metric AP is nan"):
        RewardConfig().reward({"AP": math.nan}, neck_flops=1)
