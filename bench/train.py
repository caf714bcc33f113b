"""Full-size detector throughput: training images/s and peak memory, evaluation time with and without TTA.

The full model of ``DetectorTrainingConfig`` (Cascade R-CNN R-50, FPN -> NAS-FPN 7 x 256, 14x14 box
head, 365 classes) is timed at a small and a realistic input size next to torchvision's Faster R-CNN
R-50-FPN, on random images with random boxes (throughput does not depend on the pixels). Every
measurement runs in its own process, so peak resident memory (CPU) or peak allocated memory (CUDA)
is that measurement's alone.

    python -m bench.train [--sizes 320x533,800x1333] [--iterations 2] [--tta-sides 400,800]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from detector.engine.config import DetectorTrainingConfig
from detector.engine.model import detector_config
from detector.engine.runtime import resolve_device
from detector.engine.step import apply_gradients, compute_losses
from detector.modeling import build_detector

NUM_CLASSES = 365


def _config() -> DetectorTrainingConfig:
    return DetectorTrainingConfig(dataset={"synthetic": {"root": "data/unused"}})


def _batch(height: int, width: int, batch: int, generator: torch.Generator):
    images = torch.randn(batch, 3, height, width, generator=generator)
    targets = []
    for _ in range(batch):
        xy = torch.rand(8, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        wh = 16 + torch.rand(8, 2, generator=generator) * torch.tensor([width * 0.3, height * 0.3])
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, NUM_CLASSES + 1, (8,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return images, [(height, width)] * batch, targets


def _model(kind: str) -> torch.nn.Module:
    if kind == "ours":
        return build_detector(detector_config(_config(), NUM_CLASSES))
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)


def _torchvision_losses(model, batch, device):
    images, _, targets = batch
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return model(list(images.to(device)), targets)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_train(kind: str, height: int, width: int, batch: int, iterations: int, device: torch.device) -> dict:
    """Images/s over ``iterations`` SGD steps after one warm-up step; peak memory."""
    torch.manual_seed(0)
    model = _model(kind).to(device).train()
    # torchvision resizes internally; keep its transform from changing the measured size.
    if kind == "torchvision":
        model.transform.min_size, model.transform.max_size = (min(height, width),), max(height, width)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    generator = torch.Generator().manual_seed(0)
    elapsed = 0.0
    for step in range(iterations + 1):
        data = _batch(height, width, batch, generator)
        start = time.perf_counter()
        losses = (
            compute_losses(model, data, device, amp=True)
            if kind == "ours"
            else _torchvision_losses(model, data, device)
        )
        apply_gradients(sum(losses.values()), optimizer, scaler, params, 35.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step > 0:
            elapsed += time.perf_counter() - start
    return {"images_per_second": iterations * batch / elapsed, "peak_mb": _peak_mb(device)}


@torch.no_grad()
def measure_eval(height: int, width: int, tta_sides: list[int], tta_max: int, images: int, device) -> dict:
    """Seconds per image: one view at (height, width), and TTA with every side, flipped and not."""
    model = _model("ours").to(device).eval()
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(images):
        model(torch.randn(1, 3, height, width, generator=generator).to(device), [(height, width)])
    single = (time.perf_counter() - start) / images
    keep_all = model.roi_heads.suppression.keeping_all(1000)  # as detect_tta runs each view
    start = time.perf_counter()
    for _ in range(images):
        for side in tta_sides:
            scale = min(side / min(height, width), tta_max / max(height, width))
            h, w = round(height * scale), round(width * scale)
            image = torch.randn(1, 3, h, w, generator=generator).to(device)
            for view in (image, image.flip(-1)):
                model(view, [(h, w)], suppression=keep_all)
    tta = (time.perf_counter() - start) / images
    return {"single_seconds": single, "tta_seconds": tta, "views": 2 * len(tta_sides), "peak_mb": _peak_mb(device)}


def _run_isolated(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.train", "--measure", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in part.split("x")) for part in text.split(",")]  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="320x533,800x1333", help="HxW training sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=1, help="timed steps after one warm-up step")
    parser.add_argument("--eval-size", default="800x1333")
    parser.add_argument("--eval-images", type=int, default=1)
    parser.add_argument("--tta-sides", default="400,800", help="TTA short sides (the seed: 400..1400)")
    parser.add_argument("--tta-max", type=int, default=2100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    if args.measure:
        what, *rest = args.measure
        if what == "train":
            kind, h, w = rest[0], int(rest[1]), int(rest[2])
            print(json.dumps(measure_train(kind, h, w, args.batch, args.iterations, device)))
        else:
            h, w = _sizes(args.eval_size)[0]
            sides = [int(s) for s in args.tta_sides.split(",")]
            print(json.dumps(measure_eval(h, w, sides, args.tta_max, args.eval_images, device)))
        return

    common = ["--batch", str(args.batch), "--iterations", str(args.iterations), "--device", args.device,
              "--eval-size", args.eval_size, "--eval-images", str(args.eval_images), "--tta-sides", args.tta_sides,
              "--tta-max", str(args.tta_max)] + (["--threads", str(args.threads)] if args.threads else [])
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, {args.iterations} timed steps")
    print(f"{'model':<44} {'size':>9} {'img/s':>8} {'s/img':>8} {'peak MB':>9}")
    names = {"ours": "Cascade R-CNN R50 FPN->NAS-FPN 7x256, 14x14", "torchvision": "torchvision Faster R-CNN R50-FPN"}
    for height, width in _sizes(args.sizes):
        for kind in ("ours", "torchvision"):
            r = _run_isolated(["train", kind, str(height), str(width), *common])
            print(f"{names[kind]:<44} {f'{height}x{width}':>9} {r['images_per_second']:>8.3f} "
                  f"{1 / r['images_per_second']:>8.2f} {r['peak_mb']:>9.0f}")
    r = _run_isolated(["eval", *common])
    print(f"evaluation at {args.eval_size}: {r['single_seconds']:.2f} s/image single scale, "
          f"{r['tta_seconds']:.2f} s/image TTA ({r['views']} views: sides {args.tta_sides} x flip, max {args.tta_max}); "
          f"peak {r['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
