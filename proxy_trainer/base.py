"""The proxy base: a detector trained once on the proxy's training split, shared by every episode.

NAS-FPN's proxy (Ghiasi et al. 2019) and NAS-FCOS's (Wang et al. 2020) start every candidate from a
pretrained backbone instead of training it per candidate. Here the base is a whole proxy detector
trained with an ordinary cell; an episode loads the parts ``base.load`` names, by name and shape,
never the searched cell (``neck.*`` is not even saved: with ``fpn_channels == width`` another cell's
weights would otherwise load by position), and freezes ``base.freeze``.

A base file carries what it depends on (``depends``: dataset files' hashes, detector settings, the
base's recipe), a hash of that (its cache name) and its own held-out metrics. An episode refuses a
base whose dependencies differ from its own in anything the loaded parts need, naming each field.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from detector.config import DetectorConfig
from detector.data.prepare import DatasetPaths
from detector.engine.runtime import resolve_device, seed_everything
from detector.modeling import CascadeRCNN, build_detector
from nas_errors import TrainingError, UserError
from proxy_trainer.config import ProxyConfig
from proxy_trainer.fit import evaluate, fit, set_threads, training_set
from search_spaces.architecture import Architecture
from search_spaces.space import resolve_architecture

FORMAT = "nas-fpn proxy base 1"
CELL_PREFIX = "neck."
"""State keys of the searched cell: never saved in a base, never loaded from one."""
_ALWAYS = ("dataset.",)
_NEEDS: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone.depth", "backbone.norm", "backbone.weight_standardization"),
    "pyramid": ("backbone.depth", "neck.levels", "neck.fpn_channels"),
    "rpn": ("neck.levels", "neck.width", "rpn."),
    "roi_heads": ("neck.levels", "neck.width", "neck.norm", "cascade."),
}
"""Dependencies a loaded part must share with the episode (a trailing dot: the whole section)."""
log = logging.getLogger("proxy_trainer")


@dataclass
class ProxyBase:
    path: Path
    key: str
    """SHA-256 of ``depends``."""
    depends: dict[str, Any]
    metrics: dict[str, float]
    """The base detector's own metrics on the held-out split."""
    state: dict[str, Tensor]
    train_time: float


def detector_config(detector: DetectorConfig, architecture: Architecture, num_classes: int) -> DetectorConfig:
    """``detector`` with the dataset's class count and ``architecture`` as its cell."""
    neck = detector.neck.model_copy(update={"architecture": architecture.to_dict()})
    return detector.model_copy(update={"num_classes": num_classes, "neck": neck})


def base_depends(config: ProxyConfig, paths: DatasetPaths) -> dict[str, Any]:
    """What a base built for ``config`` depends on, as flat ``section.field`` entries."""
    if config.base is None:
        raise ValueError("base: this proxy config has no base section")
    detector, train, base = config.detector, config.train, config.base
    backbone = detector.backbone.model_dump(mode="json", exclude={"weights"})
    backbone["weights"] = None if detector.backbone.weights is None else _sha256(detector.backbone.weights)
    neck = detector.neck.model_dump(mode="json", exclude={"architecture"})
    recipe = {
        "architecture": resolve_architecture(base.architecture, detector.neck.levels).canonical_hash(),
        **base.model_dump(mode="json", include={"iterations", "learning_rate", "warmup_iterations", "seed"}),
        **train.model_dump(
            mode="json",
            include={"batch_size", "momentum", "weight_decay", "warmup_factor", "schedule", "steps", "gamma",
                     "grad_clip", "short_sides", "max_size", "flip_probability"},
        ),
    }
    sections = {
        "dataset": {"train_annotations": _sha256(paths.train_annotations), "val_annotations": _sha256(paths.val_annotations)},
        "backbone": backbone,
        "neck": neck,
        "rpn": detector.rpn.model_dump(mode="json"),
        "cascade": detector.cascade.model_dump(mode="json"),
        "recipe": recipe,
    }
    return {f"{section}.{name}": value for section, fields in sections.items() for name, value in fields.items()}


def base_key(depends: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(depends, sort_keys=True).encode()).hexdigest()


def base_path(config: ProxyConfig, depends: dict[str, Any]) -> Path:
    """``base.path``, else the cache file named by the hash of ``depends``."""
    assert config.base is not None
    return config.base.path or config.base.cache_dir / f"base-{base_key(depends)[:16]}.pt"


def prepare_base(config: ProxyConfig, paths: DatasetPaths) -> ProxyBase:
    """The base an episode of ``config`` starts from: read and checked, or built first when it is a
    cached base not built yet. Raises ``UserError`` before any training for a missing or mismatched file."""
    assert config.base is not None
    depends = base_depends(config, paths)
    path = base_path(config, depends)
    if not path.exists():
        if config.base.path is not None:
            raise UserError(
                f"base.path: {path} does not exist; make it with `nas proxy base -c <this proxy config> -o {path}`, "
                "or leave base.path out to build a base on first use in base.cache_dir"
            )
        with _exclusive(path):
            if not path.exists():  # another worker may have built it while this one waited
                build_base(config, paths, path)
    base = read_base(path)
    check_base(base, depends, config.base.load)
    return base


def make_base(config: ProxyConfig, output: Path | None = None, threads: int | None = None) -> ProxyBase:
    """Build (or rebuild) ``config``'s base into ``output`` (default: where episodes look for it)."""
    if config.base is None:
        raise UserError("base: the proxy config has no base section; add `base: {}` to use the defaults")
    set_threads(threads, config.train.threads)
    paths = config.dataset.paths()
    return build_base(config, paths, output or base_path(config, base_depends(config, paths)))


def build_base(config: ProxyConfig, paths: DatasetPaths, output: Path) -> ProxyBase:
    """Train the base detector with ``base.architecture`` and the base's recipe, score it on the
    held-out split and save it (atomically) to ``output``."""
    assert config.base is not None
    base = config.base
    depends = base_depends(config, paths)
    train = config.train.model_copy(
        update={
            "iterations": base.iterations,
            "learning_rate": base.learning_rate,
            "warmup_iterations": base.warmup_iterations,
            "seed": base.seed,
        }
    )
    device = resolve_device(train.device)
    architecture = resolve_architecture(base.architecture, config.detector.neck.levels)
    dataset = training_set(config.dataset, train)
    seed_everything(base.seed)
    model = build_detector(detector_config(config.detector, architecture, dataset.num_classes)).to(device)
    log.info(f"proxy base: training with cell {base.architecture} for {base.iterations} iterations -> {output}")
    start = time.perf_counter()
    loss_curve: list[float] = []
    failure = fit(model, dataset, train, device, loss_curve)
    if failure is not None:
        raise TrainingError(f"proxy base: {failure}; lower base.learning_rate")
    train_time = time.perf_counter() - start
    metrics = evaluate(model, config, device)
    state = {key: value.cpu() for key, value in model.state_dict().items() if not key.startswith(CELL_PREFIX)}
    key = base_key(depends)
    _save_atomically(
        {"format": FORMAT, "key": key, "depends": depends, "metrics": metrics, "state": state,
         "train_time": train_time, "loss_curve": loss_curve},
        output,
    )
    log.info(f"proxy base: AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f} after {train_time:.0f} s, saved to {output}")
    return ProxyBase(Path(output), key, depends, metrics, state, train_time)


def read_base(path: Path) -> ProxyBase:
    stat = Path(path).stat()
    return _read_base(Path(path).resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _read_base(path: Path, mtime_ns: int, size: int) -> ProxyBase:
    """Cached per file version: a Ray actor reused across trials reads its base once."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        raise UserError(f"{path}: cannot read as a proxy base ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: not a proxy base (make one with `nas proxy base`)")
    return ProxyBase(path, data["key"], data["depends"], data["metrics"], data["state"], data["train_time"])


def check_base(base: ProxyBase, depends: dict[str, Any], parts: tuple[str, ...]) -> None:
    """Refuse ``base`` when it differs from ``depends`` in anything the loaded ``parts`` need."""
    needs = _ALWAYS + tuple(need for part in parts for need in _NEEDS[part])
    wanted = {key for key in depends.keys() | base.depends.keys() if any(_matches(key, need) for need in needs)}
    differ = sorted(key for key in wanted if base.depends.get(key) != depends.get(key))
    if differ:
        details = "; ".join(f"{key}: {_show(base.depends.get(key))} there, {_show(depends.get(key))} here" for key in differ)
        raise UserError(
            f"{base.path}: a proxy base made for other settings ({details}); make a matching one with "
            "`nas proxy base -c <this proxy config>`"
        )


def load_parts(model: CascadeRCNN, base: ProxyBase, parts: tuple[str, ...]) -> None:
    """Copy the ``parts`` of ``base`` into ``model``; every tensor of those parts must be there with its shape."""
    own = model.state_dict()
    wanted = {key: value for key, value in own.items() if key.split(".", 1)[0] in parts}
    missing = [key for key in wanted if key not in base.state]
    differ = [key for key in wanted if key in base.state and base.state[key].shape != wanted[key].shape]
    if missing or differ:
        raise UserError(
            f"{base.path}: does not fit this detector (missing {missing[:3]}, other shapes {differ[:3]})"
        )
    model.load_state_dict({key: base.state[key] for key in wanted}, strict=False)


def _matches(key: str, need: str) -> bool:
    return key.startswith(need) if need.endswith(".") else key == need


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a SHA-256
        return f"sha256 {value[:12]}"
    return json.dumps(value)


def _sha256(path: Path) -> str:
    stat = Path(path).stat()
    return _file_sha256(Path(path).resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: Path, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_atomically(data: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{output.name}-", dir=output.parent)
    os.close(handle)
    try:
        torch.save(data, staging)
        os.chmod(staging, 0o644)  # mkstemp makes it private; workers of other users read it on shared storage
        os.replace(staging, output)
    except BaseException:
        os.unlink(staging)
        raise


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold a lock next to ``path`` so that concurrent workers build one base, not one each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
