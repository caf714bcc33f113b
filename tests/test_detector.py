import pytest
import torch
from torchvision.models import resnet18

from detector.config import BackboneConfig, CascadeConfig, DetectorConfig, NeckConfig, PostProcessConfig, RPNConfig
from detector.modeling import CascadeRCNN
from detector.ops import WSConv2d


def tiny_config(**changes) -> DetectorConfig:
    base = dict(
        num_classes=4,
        backbone=BackboneConfig(depth=18, norm="bn", frozen_stages=0),
        neck=NeckConfig(fpn_channels=16, width=16, repeats=1),
        rpn=RPNConfig(
            anchor_sizes=(8, 16, 32, 64, 128),
            pre_nms_top_n_train=200,
            post_nms_top_n_train=100,
            pre_nms_top_n_test=100,
            post_nms_top_n_test=50,
            batch_size_per_image=64,
        ),
        cascade=CascadeConfig(batch_size_per_image=32, fc_dim=32, conv_channels=16),
    )
    base.update(changes)
    return DetectorConfig(**base)


def _batch(sizes):
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    images = torch.rand(len(sizes), 3, height, width, generator=torch.Generator().manual_seed(0))
    targets = [
        {"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0], [30.0, 20.0, 90.0, 70.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ][: len(sizes)]
    return images, sizes, targets


@pytest.mark.parametrize("resolution", [7, 14])
def test_training_step_gives_finite_losses_and_gradients(resolution):
    torch.manual_seed(0)
    model = CascadeRCNN(tiny_config(cascade=CascadeConfig(batch_size_per_image=32, fc_dim=32, conv_channels=16, box_head_resolution=resolution)))
    model.train()
    images, sizes, targets = _batch([(100, 150), (90, 131)])  # not divisible by 128
    losses = model(images, sizes, targets)
    assert set(losses) == {"rpn_objectness", "rpn_box"} | {f"stage{i}_{k}" for i in range(3) for k in ("cls", "box")}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_large_resolution_head_uses_the_14x14_feature():
    head7 = CascadeRCNN(tiny_config()).roi_heads
    head14 = CascadeRCNN(
        tiny_config(cascade=CascadeConfig(batch_size_per_image=32, fc_dim=32, conv_channels=16, box_head_resolution=14))
    ).roi_heads
    assert head7.roi_align.output_size == (7, 7) and head14.roi_align.output_size == (14, 14)
    convs14 = [m for m in head14.stages[0].head.convs if isinstance(m, torch.nn.Conv2d)]
    assert len(convs14) == 5  # four 3x3 convs at 14x14, then a learned stride-2 conv
    x = torch.randn(3, 16, 14, 14)
    assert head14.stages[0].head(x).shape == (3, 32)
    # Every position of the 14x14 input influences the output (nothing is pooled away unseen).
    x.requires_grad_()
    head14.stages[0].head(x).sum().backward()
    assert (x.grad.abs().sum(dim=(0, 1)) > 0).all()


@pytest.mark.parametrize("test_mode", ["standard", "adaptive"])
@pytest.mark.parametrize("nms", ["hard", "gaussian", "linear"])
def test_inference_modes_return_detections(test_mode, nms):
    torch.manual_seed(0)
    config = tiny_config(
        cascade=CascadeConfig(batch_size_per_image=32, fc_dim=32, conv_channels=16, test_mode=test_mode),
        postprocess=PostProcessConfig(nms=nms, score_threshold=0.0, detections_per_image=20),
    )
    model = CascadeRCNN(config).eval()
    images, sizes, _ = _batch([(100, 150), (90, 131)])
    out = model(images, sizes)
    assert len(out) == 2
    for detections, (height, width) in zip(out, sizes):
        boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
        assert 0 < len(boxes) <= 20 and boxes.shape[1] == 4
        assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
        assert ((labels >= 1) & (labels <= 4)).all()
        assert (scores[:-1] >= scores[1:]).all()


def test_standard_and_adaptive_testing_differ():
    torch.manual_seed(0)
    model = CascadeRCNN(tiny_config(postprocess=PostProcessConfig(score_threshold=0.0))).eval()
    images, sizes, _ = _batch([(100, 150)])
    adaptive = model(images, sizes)[0]
    model.roi_heads.config = model.roi_heads.config.model_copy(update={"test_mode": "standard"})
    standard = model(images, sizes)[0]
    assert not torch.allclose(adaptive["scores"][:5], standard["scores"][:5])


def test_weight_standardization_and_group_norm():
    config = tiny_config(
        backbone=BackboneConfig(depth=18, norm="gn", weight_standardization=True, frozen_stages=0),
        neck=NeckConfig(fpn_channels=32, width=32, repeats=1, norm="gn"),
        cascade=CascadeConfig(batch_size_per_image=32, fc_dim=32, conv_channels=32, box_head_resolution=14),
    )
    model = CascadeRCNN(config)
    assert isinstance(model.backbone.body.conv1, WSConv2d)
    assert isinstance(model.neck.cells[0].post_ops[0][1], WSConv2d)
    assert isinstance(model.roi_heads.stages[0].head.convs[0], WSConv2d)
    assert not isinstance(model.rpn.head.conv[0][0], WSConv2d)  # no norm follows it
    model.train()
    losses = model(*_batch([(96, 96), (64, 80)]))
    assert torch.isfinite(sum(losses.values()))


def test_backbone_loads_local_weights(tmp_path):
    reference = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = CascadeRCNN(tiny_config(backbone=BackboneConfig(depth=18, norm="frozen_bn", weights=path)))
    torch.testing.assert_close(model.backbone.body.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)
    assert not model.backbone.body.conv1.weight.requires_grad  # stem frozen
    with pytest.raises(ValueError, match="not a ResNet-34 checkpoint"):
        CascadeRCNN(tiny_config(backbone=BackboneConfig(depth=34, weights=path)))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="rpn.anchor_sizes"):
        tiny_config(rpn=RPNConfig(anchor_sizes=(8, 16)))
    with pytest.raises(ValueError, match="architecture: "):
        NeckConfig(architecture="bifpn")
    with pytest.raises(ValueError, match="adaptive_weights: needs one entry per stage"):
        CascadeConfig(adaptive_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="num_classes"):
        CascadeRCNN(tiny_config(num_classes=None))
