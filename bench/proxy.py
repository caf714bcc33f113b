"""Proxy benchmark: the proxy's fidelity report, and our training step next to torchvision's.

    python -m bench.proxy [--config configs/proxy/cpu.yaml] [--cells fpn,nasfpn] [--random 0] [--seeds 3]
                          [--reference-factor F] [--threads 1] [--steps 10]

1. The fidelity report of ``nas proxy fidelity`` (proxy_trainer.fidelity): each cell's reward over
   seeds, same-seed differences over their spread, rank agreement, verdict and cost per episode.
2. The training step time of our Cascade R-CNN next to torchvision's Faster R-CNN with the same
   backbone (ResNet, same norm, from scratch), FPN width, image size and batch, in this same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detector.data.coco import CocoDetection
from detector.data.transforms import collate_padded, train_transforms
from detector.modeling import build_detector
from nas_service.yaml_config import load_config
from proxy_trainer import ProxyConfig
from proxy_trainer.fidelity import fidelity_cells, format_report, run_fidelity


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
        min_size=config.test.short_side,
        max_size=config.train.max_size,
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
    parser.add_argument("--cells", default="fpn,nasfpn")
    parser.add_argument("--random", type=int, default=0, help="random cells besides --cells")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reference-factor", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    args = parser.parse_args()
    config = load_config(args.config, ProxyConfig)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, config {args.config}")

    print("\n1. proxy fidelity", flush=True)
    cells = fidelity_cells(args.cells.split(","), args.random, config.detector.neck.levels)
    report = run_fidelity(
        config, cells, args.seeds, reference_factor=args.reference_factor, threads=args.threads,
        on_episode=lambda e: print(f"  {e.cell} seed {e.seed}: AP {e.result.metrics.get('AP', float('nan')):.4f}, "
                                   f"{e.result.wall_time:.1f} s", flush=True),
    )
    print("\n".join(format_report(report)))

    print(f"\n2. training step, batch {config.train.batch_size}, short side {config.train.short_sides}")
    paths = config.dataset.paths()
    train = config.train
    dataset = CocoDetection(
        paths.train_annotations,
        paths.train_images,
        transforms=train_transforms(train.short_sides, train.max_size, train.flip_probability, seed=0),
    )
    size = train.batch_size
    batches = [collate_padded([dataset[i * size + j] for j in range(size)]) for i in range(args.steps + 1)]
    torch.manual_seed(0)
    detector_config = config.detector.model_copy(update={"num_classes": dataset.num_classes})
    ours = step_seconds(build_detector(detector_config), batches, args.steps, as_list=False)
    peer = step_seconds(faster_rcnn_peer(config, dataset.num_classes), batches, args.steps, as_list=True)
    print(f"Cascade R-CNN + FPN -> NAS-FPN (ours): {ours:.3f} s/step")
    print(f"torchvision Faster R-CNN + FPN:        {peer:.3f} s/step")
    print(f"ratio ours / torchvision:              {ours / peer:.2f}")


if __name__ == "__main__":
    main()
