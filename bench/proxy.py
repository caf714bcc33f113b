"""Proxy benchmark: cost and reliability of the reward, and our training step next to torchvision's.

    python -m bench.proxy [--config configs/proxy/cpu.yaml] [--seeds 3] [--steps 10]

1. For ``fpn`` and ``nasfpn`` as the searched cell, ``--seeds`` proxy episodes each: seconds per
   training iteration, seconds per episode, AP and AP50. Then the AP spread over seeds of one cell
   against the AP gap between the two cells: the proxy ranks cells reliably only if the gap is larger.
2. The training step time of our Cascade R-CNN next to torchvision's Faster R-CNN with the same
   backbone (ResNet, same norm, from scratch), FPN width, image size and batch, in this same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detector.data import CocoDetection, collate_padded, train_transforms
from detector.modeling import CascadeRCNN
from nas_service.configs import load_config
from proxy_trainer import ProxyConfig, train_proxy
from proxy_trainer.data import prepare_dataset
from search_spaces import known_architecture


def proxy_episodes(config: ProxyConfig, seeds: int) -> dict[str, list]:
    levels = config.detector.neck.levels
    results: dict[str, list] = {}
    for name in ("fpn", "nasfpn"):
        results[name] = []
        for seed in range(seeds):
            seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
            result = train_proxy(known_architecture(name, levels), seeded)
            results[name].append(result)
            print(
                f"  {name:7} seed {seed}: {result.status}, AP {result.metrics.get('AP', float('nan')):.4f} "
                f"AP50 {result.metrics.get('AP50', float('nan')):.4f}, {result.seconds_per_iteration:.3f} s/it, "
                f"episode {result.wall_time:.1f} s",
                flush=True,
            )
    return results


def faster_rcnn_peer(config: ProxyConfig, num_classes: int) -> FasterRCNN:
    """torchvision's Faster R-CNN with the proxy's backbone, FPN width, anchors and sampling sizes."""
    detector = config.detector
    norm = nn.BatchNorm2d if detector.backbone.norm == "bn" else None
    body = getattr(resnet, f"resnet{detector.backbone.depth}")(weights=None, norm_layer=norm)
    width = 64 if detector.backbone.depth < 50 else 256
    backbone = BackboneWithFPN(
        body,
        {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        [width, width * 2, width * 4, width * 8],
        detector.neck.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    rpn = detector.rpn
    return FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        rpn_anchor_generator=AnchorGenerator(
            tuple((size,) for size in rpn.anchor_sizes), (tuple(rpn.aspect_ratios),) * len(rpn.anchor_sizes)
        ),
        min_size=config.train.eval_short_side,
        max_size=config.train.train_max_size,
        image_mean=[0.0, 0.0, 0.0],  # batches arrive normalised already
        image_std=[1.0, 1.0, 1.0],
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_train,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        box_batch_size_per_image=detector.cascade.batch_size_per_image,
    )


def step_seconds(model: nn.Module, batches: list, steps: int, as_list: bool) -> float:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    model.train()

    def step(batch) -> None:
        images, sizes, targets = batch
        if as_list:
            losses = model([image[:, :h, :w] for image, (h, w) in zip(images, sizes)], targets)
        else:
            losses = model(images, sizes, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    step(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches[1 : steps + 1]:
        step(batch)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/proxy/cpu.yaml"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    args = parser.parse_args()
    config = load_config(args.config, ProxyConfig)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, config {args.config}")

    print(f"\n1. proxy episodes ({args.seeds} seeds per cell)")
    results = proxy_episodes(config, args.seeds)
    print(f"\n{'cell':8} {'AP mean':>8} {'AP sd':>7} {'AP50 mean':>9} {'s/it':>6} {'s/episode':>9}")
    means = {}
    spreads = []
    for name, runs in results.items():
        aps = [r.metrics.get("AP", 0.0) for r in runs]
        means[name] = statistics.mean(aps)
        spreads.append(statistics.stdev(aps) if len(aps) > 1 else 0.0)
        print(
            f"{name:8} {means[name]:8.4f} {spreads[-1]:7.4f} "
            f"{statistics.mean(r.metrics.get('AP50', 0.0) for r in runs):9.4f} "
            f"{statistics.mean(r.seconds_per_iteration for r in runs):6.3f} "
            f"{statistics.mean(r.wall_time for r in runs):9.1f}"
        )
    gap = abs(means["nasfpn"] - means["fpn"])
    print(f"AP gap between cells {gap:.4f}; largest AP sd over seeds {max(spreads):.4f}; "
          f"gap / sd = {gap / max(max(spreads), 1e-9):.2f}")

    print(f"\n2. training step, batch {config.train.batch_size}, short side {config.train.train_short_sides}")
    paths = prepare_dataset(config.dataset)
    train = config.train
    dataset = CocoDetection(
        paths.train_annotations,
        paths.train_images,
        transforms=train_transforms(train.train_short_sides, train.train_max_size, train.flip_probability, seed=0),
    )
    size = train.batch_size
    batches = [collate_padded([dataset[i * size + j] for j in range(size)]) for i in range(args.steps + 1)]
    torch.manual_seed(0)
    detector_config = config.detector.model_copy(update={"num_classes": dataset.num_classes})
    ours = step_seconds(CascadeRCNN(detector_config), batches, args.steps, as_list=False)
    peer = step_seconds(faster_rcnn_peer(config, dataset.num_classes), batches, args.steps, as_list=True)
    print(f"Cascade R-CNN + FPN -> NAS-FPN (ours): {ours:.3f} s/step")
    print(f"torchvision Faster R-CNN + FPN:        {peer:.3f} s/step")
    print(f"ratio ours / torchvision:              {ours / peer:.2f}")


if __name__ == "__main__":
    main()
