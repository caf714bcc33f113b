import math

import pytest
import torch
from pydantic import ValidationError
from torchvision.models import resnet18

from detector.config import BackboneConfig, CascadeConfig, DetectorConfig, NeckConfig, PostProcessConfig, RPNConfig
from detector.modeling import build_detector
from detector.modeling.build import build_roi_heads
from detector.ops import WSConv2d
from nas_service.yaml_config import describe_validation_error


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
    model = build_detector(tiny_config(cascade=CascadeConfig(batch_size_per_image=32, fc_dim=32, conv_channels=16, box_head_resolution=resolution)))
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
    head7 = build_detector(tiny_config()).roi_heads
    head14 = build_detector(
        tiny_config(cascade=CascadeConfig(batch_size_per_image=32, fc_dim=32, conv_channels=16, box_head_resolution=14))
    ).roi_heads
    assert head7.roi_align.output_size == (7, 7) and head14.roi_align.output_size == (14, 14)
    convs14 = [m for m in head14.stages[0].head.convs if isinstance(m, torch.nn.Conv2d)]
    assert len(convs14) == 5  # four 3x3 convs at 14x14, then a learned stride-2 conv
    x = torch.randn(3, 16, 14, 14)
    assert head14.stages[0].head(x).shape == (3, 32)  # 3 RoIs, fc_dim 32
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
    model = build_detector(config).eval()
    images, sizes, _ = _batch([(100, 150), (90, 131)])
    out = model(images, sizes)
    assert len(out) == 2
    for detections, (height, width) in zip(out, sizes):
        boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
        assert 0 < len(boxes) <= 20 and boxes.shape[1] == 4  # detections_per_image
        assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
        assert ((labels >= 1) & (labels <= 4)).all()  # num_classes 4; 0 is the background
        assert (scores[:-1] >= scores[1:]).all()


# -- an independent oracle for cascade testing -------------------------------------------------------
# A cascade small enough to follow by hand: one feature map whose value is x / 100 at column x, so a
# RoI's mean RoIAlign feature is its centre x / 100 (bilinear sampling of a linear map is exact);
# each stage's head passes that mean through, its class logit is a * mean + b, and its box deltas
# are constants. The expected detections below are computed from the published formulas alone.

ORACLE_SIZE = 100  # image and feature map are 100 x 100 pixels (stride 1), so no RoI is clipped
ORACLE_PROPOSALS = ((20.0, 30.0, 60.0, 70.0), (26.0, 32.0, 66.0, 72.0))  # arbitrary, overlapping (IoU 0.68)
# Deltas (dx, dy, dw, dh) in units of each stage's std, arbitrary: stage 2 widens, stage 3 moves back
# and down and shortens, so every stage's boxes have a different centre.
ORACLE_DELTAS = ((1.0, 0.0, 0.0, 0.0), (2.0, 0.0, 1.0, 0.0), (-3.0, 3.0, 0.0, -1.5))
# Foreground logit = a * (centre x / 100) + b per stage, arbitrary, of both signs so that which boxes
# a stage scores changes its probability.
ORACLE_LOGITS = ((5.0, -1.0), (-4.0, 3.0), (10.0, -4.0))
# Cascade R-CNN (Cai and Vasconcelos, CVPR 2018): box-delta stds of the three stages.
PAPER_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
# The 2019 solution's adaptive testing: stage weights 0.2 / 0.3 / 0.5 (Baidu's Objects365 2019 solution).
SEED_WEIGHTS = (0.2, 0.3, 0.5)


def _decode(box, deltas, stds):
    """Faster R-CNN box parameterisation (Ren et al. 2015, eq. 2), deltas scaled by the stage's stds."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx = x1 + w / 2 + deltas[0] * stds[0] * w
    cy = y1 + h / 2 + deltas[1] * stds[1] * h
    w, h = w * math.exp(deltas[2] * stds[2]), h * math.exp(deltas[3] * stds[3])
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _foreground(stage, box):
    """softmax([0, logit])[1] of the stage's head on a box: a sigmoid of a * centre_x / 100 + b."""
    a, b = ORACLE_LOGITS[stage]
    return 1 / (1 + math.exp(-(a * (box[0] + box[2]) / 2 / ORACLE_SIZE + b)))


def _iou(p, q):
    inter = max(0.0, min(p[2], q[2]) - max(p[0], q[0])) * max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(p) + area(q) - inter)


def _expected_candidates(test_mode):
    """(box, score) of each proposal before suppression, by the two test modes' definitions."""
    candidates = []
    for proposal in ORACLE_PROPOSALS:
        b1 = _decode(proposal, ORACLE_DELTAS[0], PAPER_STDS[0])
        b2 = _decode(b1, ORACLE_DELTAS[1], PAPER_STDS[1])
        b3 = _decode(b2, ORACLE_DELTAS[2], PAPER_STDS[2])
        if test_mode == "standard":  # all heads score the stage-2 boxes, mean; boxes of the last stage
            score = sum(_foreground(stage, b2) for stage in range(3)) / 3
            box = b3
        else:  # each stage scores what it received; scores and boxes weighted 0.2 / 0.3 / 0.5
            received = (proposal, b1, b2)
            score = sum(w * _foreground(stage, rois) for stage, (w, rois) in enumerate(zip(SEED_WEIGHTS, received)))
            box = tuple(sum(w * b[i] for w, b in zip(SEED_WEIGHTS, (b1, b2, b3))) for i in range(4))
        candidates.append((box, score))
    return sorted(candidates, key=lambda c: -c[1])


def _expected_detections(test_mode, nms, iou_threshold=0.5, sigma=0.5):
    """Two candidates of one class: the top one stays, the other is removed (hard, IoU > 0.5) or
    decayed (Soft-NMS, Bodla et al. 2017: linear 1 - IoU above the threshold, gaussian exp(-IoU^2/sigma))."""
    (top, top_score), (other, other_score) = _expected_candidates(test_mode)
    overlap = _iou(top, other)
    assert overlap > iou_threshold  # the boxes were chosen to overlap this much
    if nms == "hard":
        return [(top, top_score)]
    decay = 1 - overlap if nms == "linear" else math.exp(-overlap**2 / sigma)
    return [(top, top_score), (other, other_score * decay)]


def oracle_heads(test_mode, nms):
    config = CascadeConfig(fc_dim=1, head_convs=0, test_mode=test_mode)
    assert config.box_stds == PAPER_STDS and config.adaptive_weights == SEED_WEIGHTS  # the defaults
    postprocess = PostProcessConfig(nms=nms, iou_threshold=0.5, sigma=0.5, score_threshold=0.05)
    heads = build_roi_heads(config, postprocess, num_classes=1, in_channels=1, roi_levels=(3,), norm="none")
    with torch.no_grad():
        for stage, (logit, deltas) in zip(heads.stages, zip(ORACLE_LOGITS, ORACLE_DELTAS)):
            _, fc1, _, fc2, _ = stage.head.fcs  # flatten, 49 -> 1, relu, 1 -> 1, relu
            fc1.weight.fill_(1 / 49), fc1.bias.zero_()  # the mean of the 7 x 7 RoI feature
            fc2.weight.fill_(1.0), fc2.bias.zero_()
            stage.predictor.cls_score.weight.copy_(torch.tensor([[0.0], [logit[0]]]))
            stage.predictor.cls_score.bias.copy_(torch.tensor([0.0, logit[1]]))
            stage.predictor.bbox_pred.weight.zero_()
            stage.predictor.bbox_pred.bias.copy_(torch.tensor(deltas))
    return heads.eval()


@pytest.mark.parametrize("test_mode", ["standard", "adaptive"])
@pytest.mark.parametrize("nms", ["hard", "gaussian", "linear"])
def test_cascade_testing_matches_a_hand_calculation(test_mode, nms):
    heads = oracle_heads(test_mode, nms)
    ramp = (torch.arange(ORACLE_SIZE, dtype=torch.float32) / ORACLE_SIZE).expand(1, 1, ORACLE_SIZE, ORACLE_SIZE)
    (found,) = heads({"3": ramp.contiguous()}, [torch.tensor(ORACLE_PROPOSALS)], [(ORACLE_SIZE, ORACLE_SIZE)])
    expected = _expected_detections(test_mode, nms)
    assert found["labels"].tolist() == [1] * len(expected)
    torch.testing.assert_close(found["boxes"], torch.tensor([box for box, _ in expected]), rtol=0, atol=1e-4)
    torch.testing.assert_close(found["scores"], torch.tensor([score for _, score in expected]), rtol=0, atol=1e-6)


def test_weight_standardization_and_group_norm():
    config = tiny_config(
        backbone=BackboneConfig(depth=18, norm="gn", weight_standardization=True, frozen_stages=0),
        neck=NeckConfig(fpn_channels=32, width=32, repeats=1, norm="gn"),
        cascade=CascadeConfig(batch_size_per_image=32, fc_dim=32, conv_channels=32, box_head_resolution=14),
    )
    model = build_detector(config)
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
    model = build_detector(tiny_config(backbone=BackboneConfig(depth=18, norm="frozen_bn", weights=path)))
    torch.testing.assert_close(model.backbone.body.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)
    assert not model.backbone.body.conv1.weight.requires_grad  # stem frozen
    with pytest.raises(ValueError, match="not a ResNet-34 checkpoint"):
        build_detector(tiny_config(backbone=BackboneConfig(depth=34, weights=path)))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="rpn.anchor_sizes"):
        tiny_config(rpn=RPNConfig(anchor_sizes=(8, 16)))
    with pytest.raises(ValidationError) as error:
        NeckConfig(architecture="bifpn")
    assert describe_validation_error(error.value).startswith("architecture: 'bifpn' is not a known architecture")
    with pytest.raises(ValueError, match="adaptive_weights: needs one entry per stage"):
        CascadeConfig(adaptive_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="num_classes"):
        build_detector(tiny_config(num_classes=None))
