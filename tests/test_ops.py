import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from detector.ops import WSConv2d, batched_soft_nms, convert_to_ws, soft_nms, standardize_weight


def _iou(a, b):
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / (area_a + area_b - inter)


def reference_soft_nms(boxes, scores, method, iou_threshold, sigma, score_threshold):
    """The paper's algorithm, one pair at a time: pick the max, decay the others, drop the weak."""
    boxes = np.asarray(boxes, dtype=np.float64)
    current = [float(s) for s in scores]
    remaining = [i for i in range(len(current)) if current[i] >= score_threshold]
    kept, kept_scores = [], []
    while remaining:
        best = remaining[0]
        for i in remaining[1:]:
            if current[i] > current[best] or (current[i] == current[best] and i < best):
                best = i
        kept.append(best)
        kept_scores.append(current[best])
        survivors = []
        for i in remaining:
            if i == best:
                continue
            overlap = _iou(boxes[best], boxes[i])
            if method == "linear":
                weight = 1.0 - overlap if overlap > iou_threshold else 1.0
            elif method == "gaussian":
                weight = math.exp(-overlap * overlap / sigma)
            else:
                if overlap > iou_threshold:
                    continue
                weight = 1.0
            current[i] *= weight
            if current[i] >= score_threshold:
                survivors.append(i)
        remaining = survivors
    return kept, kept_scores


def _random_boxes(rng, n, spread=40.0, shift=0.0):
    """Boxes crowded into a small area so that most of them overlap."""
    centres = rng.uniform(0.0, spread, size=(n, 2)) + shift
    sizes = rng.uniform(4.0, 30.0, size=(n, 2))
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)


@pytest.mark.parametrize("method", ["linear", "gaussian", "hard"])
def test_soft_nms_matches_reference_on_random_boxes(method):
    rng = np.random.default_rng(1234)
    for case in range(50):
        n = int(rng.integers(0, 61))
        boxes = _random_boxes(rng, n)
        scores = rng.uniform(0.0, 1.0, size=n)
        iou_threshold = float(rng.uniform(0.1, 0.7))
        sigma = float(rng.uniform(0.2, 1.0))
        score_threshold = float(rng.choice([1e-3, 0.05, 0.2]))
        expected_keep, expected_scores = reference_soft_nms(
            boxes, scores, method, iou_threshold, sigma, score_threshold
        )
        keep, kept_scores = soft_nms(
            torch.from_numpy(boxes),
            torch.from_numpy(scores),
            method=method,
            iou_threshold=iou_threshold,
            sigma=sigma,
            score_threshold=score_threshold,
        )
        assert keep.dtype == torch.int64
        assert keep.tolist() == expected_keep, f"case {case}"
        np.testing.assert_allclose(kept_scores.numpy(), expected_scores, rtol=0, atol=1e-5)
        assert (kept_scores[:-1] >= kept_scores[1:]).all()


def test_soft_nms_float32_agrees_with_reference():
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 40)
    scores = rng.uniform(0.0, 1.0, size=40)
    expected_keep, expected_scores = reference_soft_nms(boxes, scores, "linear", 0.3, 0.5, 1e-3)
    keep, kept_scores = soft_nms(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32))
    assert kept_scores.dtype == torch.float32
    assert keep.tolist() == expected_keep
    np.testing.assert_allclose(kept_scores.numpy(), expected_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["linear", "gaussian", "hard"])
def test_equal_scores_pick_lowest_index_first(method):
    disjoint = torch.tensor([[0, 0, 1, 1], [10, 0, 11, 1], [20, 0, 21, 1], [30, 0, 31, 1]], dtype=torch.float32)
    keep, kept_scores = soft_nms(disjoint, torch.tensor([0.5, 0.9, 0.5, 0.9]), method=method)
    assert keep.tolist() == [1, 3, 0, 2]
    assert kept_scores.tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5])

    identical = torch.tensor([[0, 0, 10, 10]] * 3, dtype=torch.float32)
    keep, _ = soft_nms(identical, torch.tensor([0.7, 0.7, 0.7]), method=method, score_threshold=0.0)
    assert keep[0].item() == 0


def test_iou_exactly_at_threshold_is_not_suppressed():
    # IoU([0,0,2,1], [0,0,1,1]) is exactly 1/2 with continuous areas (it would be 4/6 with +1 pixel).
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    for method in ("linear", "hard"):
        keep, kept_scores = soft_nms(boxes, scores, method=method, iou_threshold=0.5)
        assert keep.tolist() == [0, 1]
        assert kept_scores.tolist() == [pytest.approx(0.9), pytest.approx(0.8)]

    keep, kept_scores = soft_nms(boxes, scores, method="linear", iou_threshold=0.49)
    assert keep.tolist() == [0, 1]
    assert kept_scores[1].item() == pytest.approx(0.8 * 0.5)
    keep, _ = soft_nms(boxes, scores, method="hard", iou_threshold=0.49)
    assert keep.tolist() == [0]
    _, kept_scores = soft_nms(boxes, scores, method="gaussian", sigma=0.5)
    assert kept_scores[1].item() == pytest.approx(0.8 * math.exp(-0.25 / 0.5))


def test_hard_suppressed_boxes_vanish_even_with_zero_threshold():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep, _ = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.1]), method="hard", score_threshold=0.0)
    assert keep.tolist() == [0, 2]
    keep, kept_scores = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.1]), method="linear", score_threshold=0.0)
    assert keep.tolist() == [0, 2, 1]
    assert kept_scores[2].item() == 0.0


def test_score_threshold_drops_weak_boxes_up_front_and_after_decay():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [50.0, 50.0, 60.0, 60.0]])
    keep, _ = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.05]), score_threshold=0.1)
    # Box 2 starts below the threshold; box 1 (IoU 0.9) decays to 0.08 and is dropped.
    assert keep.tolist() == [0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_input_returns_empty_tensors(dtype):
    keep, kept_scores = soft_nms(torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=dtype))
    assert keep.shape == (0,) and keep.dtype == torch.int64
    assert kept_scores.shape == (0,) and kept_scores.dtype == dtype
    keep, kept_scores = batched_soft_nms(
        torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=dtype), torch.zeros(0, dtype=torch.int64)
    )
    assert keep.shape == (0,) and keep.dtype == torch.int64
    assert kept_scores.shape == (0,) and kept_scores.dtype == dtype


def test_all_scores_below_threshold_returns_empty():
    keep, kept_scores = soft_nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([1e-4]))
    assert keep.tolist() == [] and keep.dtype == torch.int64
    assert kept_scores.tolist() == []


@pytest.mark.parametrize("method", ["linear", "gaussian", "hard"])
def test_single_box_is_kept(method):
    keep, kept_scores = soft_nms(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0.42]), method=method)
    assert keep.tolist() == [0]
    assert kept_scores.tolist() == [pytest.approx(0.42)]


def test_max_detections_truncates_the_full_result():
    rng = np.random.default_rng(3)
    boxes = torch.from_numpy(_random_boxes(rng, 30))
    scores = torch.from_numpy(rng.uniform(0.1, 1.0, size=30))
    full_keep, full_scores = soft_nms(boxes, scores, method="gaussian")
    assert len(full_keep) > 5
    keep, kept_scores = soft_nms(boxes, scores, method="gaussian", max_detections=5)
    assert torch.equal(keep, full_keep[:5])
    assert torch.equal(kept_scores, full_scores[:5])
    keep, kept_scores = soft_nms(boxes, scores, max_detections=0)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and kept_scores.shape == (0,)
    keep, _ = soft_nms(boxes, scores, max_detections=1000)
    assert torch.equal(keep, soft_nms(boxes, scores)[0])
    keep, _ = batched_soft_nms(boxes, scores, torch.zeros(30, dtype=torch.int64), max_detections=4)
    assert torch.equal(keep, soft_nms(boxes, scores)[0][:4])


def test_unknown_method_raises_and_names_it():
    with pytest.raises(ValueError, match="'softest'"):
        soft_nms(torch.zeros(1, 4), torch.ones(1), method="softest")
    with pytest.raises(ValueError, match="'softest'"):
        batched_soft_nms(torch.zeros(1, 4), torch.ones(1), torch.zeros(1, dtype=torch.int64), method="softest")


@pytest.mark.parametrize(
    ("boxes", "scores", "message"),
    [
        (torch.zeros(3, 4), torch.ones(2), "disagree on N"),
        (torch.zeros(3, 5), torch.ones(3), r"\[N, 4\]"),
        (torch.zeros(4), torch.ones(1), r"\[N, 4\]"),
        (torch.zeros(3, 4), torch.ones(3, 1), r"scores must have shape \[N\]"),
    ],
)
def test_mismatched_shapes_raise(boxes, scores, message):
    with pytest.raises(ValueError, match=message):
        soft_nms(boxes, scores)


def test_batched_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        batched_soft_nms(torch.zeros(3, 4), torch.ones(3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        batched_soft_nms(torch.zeros(3, 4), torch.ones(3), torch.zeros(3))


def test_hard_equals_torchvision_nms():
    rng = np.random.default_rng(99)
    for case in range(30):
        n = int(rng.integers(1, 80))
        boxes = torch.tensor(_random_boxes(rng, n), dtype=torch.float32)
        scores = torch.tensor(rng.uniform(0.01, 1.0, size=n), dtype=torch.float32)
        iou_threshold = float(rng.uniform(0.1, 0.8))
        keep, kept_scores = soft_nms(boxes, scores, method="hard", iou_threshold=iou_threshold, score_threshold=0.0)
        assert torch.equal(keep, nms(boxes, scores, iou_threshold)), f"case {case}"
        assert torch.equal(kept_scores, scores[keep])


@pytest.mark.parametrize("method", ["linear", "gaussian", "hard"])
def test_batched_equals_per_class_soft_nms_merged_by_score(method):
    rng = np.random.default_rng(5)
    for case in range(20):
        n = int(rng.integers(1, 60))
        boxes = torch.from_numpy(_random_boxes(rng, n, shift=-20.0 if case % 2 else 0.0))
        scores = torch.from_numpy(rng.uniform(0.0, 1.0, size=n))
        labels = torch.from_numpy(rng.integers(0, 4, size=n))
        merged = []
        for label in labels.unique().tolist():
            members = torch.nonzero(labels == label).flatten()
            keep, kept_scores = soft_nms(boxes[members], scores[members], method=method)
            merged += zip(kept_scores.tolist(), members[keep].tolist())
        merged.sort(key=lambda pair: (-pair[0], pair[1]))

        keep, kept_scores = batched_soft_nms(boxes, scores, labels, method=method)
        assert keep.tolist() == [index for _, index in merged], f"case {case}"
        np.testing.assert_allclose(kept_scores.numpy(), [score for score, _ in merged], rtol=0, atol=1e-9)


def test_batched_classes_do_not_interact():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    keep, kept_scores = batched_soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 1]))
    # Box 1 is untouched by box 0 of another class; box 2 sits exactly on box 1 and decays to 0.
    assert keep.tolist() == [0, 1]
    assert kept_scores.tolist() == [pytest.approx(0.9), pytest.approx(0.8)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_soft_nms_on_cuda_matches_cpu():
    rng = np.random.default_rng(11)
    boxes = torch.from_numpy(_random_boxes(rng, 50))
    scores = torch.from_numpy(rng.uniform(0.0, 1.0, size=50))
    keep, kept_scores = soft_nms(boxes.cuda(), scores.cuda(), method="gaussian")
    assert keep.device.type == "cuda" and kept_scores.device.type == "cuda"
    cpu_keep, cpu_scores = soft_nms(boxes, scores, method="gaussian")
    assert torch.equal(keep.cpu(), cpu_keep)
    torch.testing.assert_close(kept_scores.cpu(), cpu_scores)


def test_standardized_weight_has_zero_mean_and_unit_std_per_output_channel():
    torch.manual_seed(0)
    conv = WSConv2d(6, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) * 0.3 + 0.2)
    w = conv.weight.detach().double()
    w_hat = standardize_weight(w)
    assert w_hat.mean(dim=(1, 2, 3)).abs().max() < 1e-9
    torch.testing.assert_close(w_hat.std(dim=(1, 2, 3)), torch.ones(8, dtype=torch.float64), rtol=1e-4, atol=0)

    # eps is added to the unbiased std, not to the variance.
    flat = w.flatten(1)
    mean = flat.sum(dim=1) / flat.shape[1]
    std = (((flat - mean[:, None]) ** 2).sum(dim=1) / (flat.shape[1] - 1)).sqrt()
    expected = (flat - mean[:, None]) / (std[:, None] + 1e-5)
    torch.testing.assert_close(w_hat.flatten(1), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(standardize_weight(w, eps=0.5).flatten(1), (flat - mean[:, None]) / (std[:, None] + 0.5))


def test_wsconv_forward_equals_conv_with_standardized_weight():
    torch.manual_seed(1)
    conv = WSConv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
    x = torch.randn(2, 4, 9, 11)
    expected = F.conv2d(x, standardize_weight(conv.weight), conv.bias, stride=2, padding=2, dilation=2, groups=2)
    torch.testing.assert_close(conv(x), expected)
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, stride=2, padding=2, dilation=2, groups=2))
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_convert_to_ws_swaps_plain_convs_and_keeps_weights():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False)
    )
    first_w, first_b = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    last_w = model[3].weight.detach().clone()
    x = torch.randn(2, 3, 7, 5)

    assert convert_to_ws(model) is model
    assert type(model[0]) is WSConv2d and type(model[3]) is WSConv2d
    assert torch.equal(model[0].weight, first_w) and torch.equal(model[0].bias, first_b)
    assert torch.equal(model[3].weight, last_w) and model[3].bias is None
    assert (model[0].kernel_size, model[0].padding, model[3].kernel_size) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(model[1], nn.GroupNorm) and isinstance(model[2], nn.ReLU)

    hidden = F.conv2d(x, standardize_weight(first_w), first_b, padding=1)
    hidden = F.relu(F.group_norm(hidden, 2, model[1].weight, model[1].bias))
    expected = F.conv2d(hidden, standardize_weight(last_w))
    torch.testing.assert_close(model(x), expected)


def test_convert_to_ws_recurses_keeps_dtype_and_skips_subclasses():
    class MyConv(nn.Conv2d):
        pass

    already = WSConv2d(2, 2, 1)
    model = nn.Module()
    model.block = nn.Sequential(nn.Conv2d(2, 2, 3, dtype=torch.float64), MyConv(2, 2, 1), already)
    model.block[0].weight.requires_grad_(False)
    convert_to_ws(model)
    assert type(model.block[0]) is WSConv2d
    assert model.block[0].weight.dtype == torch.float64
    assert not model.block[0].weight.requires_grad
    assert type(model.block[1]) is MyConv
    assert model.block[2] is already
    assert type(convert_to_ws(nn.Conv2d(2, 3, 1))) is WSConv2d
