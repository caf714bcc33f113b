import logging
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from detector.config import DetectorConfig
from detector.data.prepare import SyntheticDataConfig, ensure_synthetic_dataset
from detector.engine.loop import TrainLoop
from detector.modeling.backbone import ResNetBackbone
from nas_service.yaml_config import load_config
from proxy_trainer import PROXY_PRESET, ProxyConfig
from proxy_trainer.fit import set_threads
from proxy_trainer.trainer import _episode_model, train_proxy
from search_spaces import fpn, known_architecture, nasfpn

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "proxy"


def tiny_proxy_config(root: Path, **train) -> ProxyConfig:
    """A proxy that trains in seconds; ``train`` changes its training settings."""
    return ProxyConfig.model_validate(
        {
            "dataset": {
                "synthetic": {"root": root, "num_train": 12, "num_val": 6, "image_size": 64, "num_classes": 3}
            },
            "detector": {
                "backbone": {"depth": 18, "norm": "bn", "frozen_stages": 0},
                "neck": {"fpn_channels": 16, "width": 16, "repeats": 1},
                "rpn": {
                    "anchor_sizes": [8, 16, 32, 64, 128],
                    "pre_nms_top_n_train": 100,
                    "post_nms_top_n_train": 50,
                    "pre_nms_top_n_test": 50,
                    "post_nms_top_n_test": 30,
                    "batch_size_per_image": 32,
                },
                "cascade": {"batch_size_per_image": 16, "fc_dim": 32},
            },
            "train": {
                "iterations": 4,
                "batch_size": 2,
                "warmup_iterations": 2,
                "short_sides": [56, 72],
                "max_size": 96,
                "threads": 1,
                **train,
            },
            "test": {"short_side": 64, "max_size": 96, "batch_size": 3},
        }
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("proxy") / "synthetic"


def test_tiny_proxy_trains_and_evaluates_deterministically(data_root):
    config = tiny_proxy_config(data_root)
    first = train_proxy(known_architecture("nasfpn", (2, 3, 4, 5, 6)), config)
    assert first.status == "completed" and first.error is None
    assert first.iterations == 4 and len(first.loss_curve) == 4
    assert all(math.isfinite(loss) for loss in first.loss_curve)
    assert set(first.metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0.0 <= first.metrics["AP"] <= 1.0
    assert first.neck_flops > 0 and first.neck_params > 0 and first.detector_params > first.neck_params
    assert first.trainable_params == first.detector_params and first.threads == 1 and first.base is None
    assert first.wall_time >= first.train_time + first.eval_time > 0
    second = train_proxy(known_architecture("nasfpn", (2, 3, 4, 5, 6)), config)
    assert second.loss_curve == first.loss_curve
    assert second.metrics == pytest.approx(first.metrics, nan_ok=True)


def test_the_cell_changes_the_detector(data_root):
    config = tiny_proxy_config(data_root, iterations=1)
    with_fpn = train_proxy(fpn((2, 3, 4, 5, 6)), config)
    with_nasfpn = train_proxy(nasfpn((2, 3, 4, 5, 6)), config)
    assert with_fpn.neck_params != with_nasfpn.neck_params
    assert with_fpn.loss_curve != with_nasfpn.loss_curve


DIVERGING = {"learning_rate": 1e30, "warmup_iterations": 0}
"""Training settings whose first step blows the weights up: the loss of iteration 1 is NaN."""


def test_non_finite_loss_fails_with_a_reason(data_root):
    result = train_proxy(nasfpn((2, 3, 4, 5, 6)), tiny_proxy_config(data_root, **DIVERGING))
    assert result.status == "failed"
    assert result.error.startswith("non-finite loss nan at iteration 1 (")
    assert result.iterations == 1 and result.metrics == {}


def test_synthetic_dataset_is_reused_only_with_the_same_settings(data_root):
    config = SyntheticDataConfig(root=data_root, num_train=12, num_val=6, image_size=64, num_classes=3)
    paths = ensure_synthetic_dataset(config)
    assert paths.train_annotations.exists() and paths.val_images.is_dir()
    with pytest.raises(ValueError, match=r"other settings \(num_classes"):
        ensure_synthetic_dataset(config.model_copy(update={"num_classes": 5}))


def test_learning_rate_schedule_warms_up_then_decays(data_root):
    config = tiny_proxy_config(data_root, iterations=100, warmup_iterations=10, warmup_factor=0.01)
    loop = TrainLoop(torch.nn.Linear(1, 1), config.train, torch.device("cpu"), log=lambda _: None)
    factors = [loop.scheduler.lr_lambdas[0](i) for i in range(100)]
    assert factors[0] == pytest.approx(0.01)
    assert factors[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:11]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] < 0.01


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_proxy_configs_validate(path):
    config = load_config(path, ProxyConfig)
    assert isinstance(config.detector, DetectorConfig)
    assert config.dataset.synthetic is not None or config.dataset.val_annotations is not None


def test_dataset_config_rejects_training_on_the_reward_split(tmp_path):
    data = yaml.safe_load((CONFIGS / "cpu.yaml").read_text())
    same = str(tmp_path / "ann.json")
    data["dataset"] = {"train_annotations": same, "train_images": "x", "val_annotations": same, "val_images": "x"}
    with pytest.raises(ValueError, match="the reward split must differ"):
        ProxyConfig.model_validate(data)


def test_the_proxy_preset_fills_what_a_config_leaves_out(tmp_path):
    config = ProxyConfig.model_validate(
        {"dataset": {"synthetic": {"root": str(tmp_path)}}, "detector": {}, "train": {"iterations": 7}}
    )
    assert config.train.iterations == 7 and config.train.batch_size == PROXY_PRESET["train"]["batch_size"]
    assert (config.train.schedule, config.test.short_side, config.dataset.num_workers) == ("cosine", 128, 0)
    with pytest.raises(ValueError, match="dataset.sampler: the proxy draws its training images uniformly"):
        ProxyConfig.model_validate({"dataset": {"synthetic": {"root": str(tmp_path)}, "sampler": {"kind": "class_aware"}},
                                    "detector": {}})


def test_frozen_backbone_stages_keep_their_bn_statistics():
    backbone = ResNetBackbone(depth=18, norm="bn", frozen_stages=2)
    body = backbone.body
    frozen_bns, trained_bn = (body.bn1, body.layer1[0].bn1), body.layer2[0].bn1
    before = [bn.running_mean.clone() for bn in (*frozen_bns, trained_bn)]
    torch.nn.Sequential(backbone).train()  # as the detector's train() reaches it
    backbone(torch.randn(2, 3, 64, 64))
    assert not body.layer1.training and body.layer2.training
    assert all(not p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert torch.equal(frozen_bns[0].running_mean, before[0]) and torch.equal(frozen_bns[1].running_mean, before[1])
    assert not torch.equal(trained_bn.running_mean, before[2])


def test_threads_come_from_the_caller_then_the_config_then_the_cpus_the_process_may_use():
    try:
        assert set_threads(2, 1) == (2, "the caller") and torch.get_num_threads() == 2
        assert set_threads(None, 1) == (1, "train.threads") and torch.get_num_threads() == 1
        threads, source = set_threads(None, None)
        assert threads == len(os.sched_getaffinity(0)) == torch.get_num_threads()
        assert source == "the CPUs this process may use"
    finally:
        torch.set_num_threads(1)


def test_an_episode_logs_its_progress(data_root, caplog):
    caplog.set_level(logging.INFO, logger="proxy_trainer")
    result = train_proxy(fpn((2, 3, 4, 5, 6)), tiny_proxy_config(data_root, log_every=2), threads=1)
    messages = [record.getMessage() for record in caplog.records if record.name == "proxy_trainer"]
    assert result.threads == 1 and "1 threads (from the caller)" in messages[0]
    progress = [m for m in messages if m.startswith("iteration ")]
    assert [m.split()[1] for m in progress] == ["1/4", "2/4", "4/4"]
    assert all(" loss " in m and " ETA " in m for m in progress)
    assert messages[-1].startswith(f"episode: AP {result.metrics['AP']:.4f}")


def test_for_one_seed_every_part_but_the_cell_starts_the_same(data_root):
    config = tiny_proxy_config(data_root)
    with_fpn, _ = _episode_model(config, fpn((2, 3, 4, 5, 6)), 3, None)
    with_nasfpn, _ = _episode_model(config, nasfpn((2, 3, 4, 5, 6)), 3, None)
    other_seed, _ = _episode_model(tiny_proxy_config(data_root, seed=1), nasfpn((2, 3, 4, 5, 6)), 3, None)
    a, b, c = with_fpn.state_dict(), with_nasfpn.state_dict(), other_seed.state_dict()
    shared = [key for key in b if not key.startswith("neck.")]
    assert any(key.startswith("rpn.") for key in shared) and any(key.startswith("roi_heads.") for key in shared)
    assert all(torch.equal(a[key], b[key]) for key in shared)
    assert not all(torch.equal(b[key], c[key]) for key in shared if key.startswith("roi_heads."))
