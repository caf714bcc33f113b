"""Export a search's best architectures: a commented detector config for ``nas train``, or bare JSON.

The config carries the cell inline with its hash and where it came from, so nobody copies an
architecture by hand from a log into a training config.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from detector.config import NeckConfig, RPNConfig
from detector.engine.config import DatasetConfig, DetectorTrainingConfig, ExportSource
from nas_errors import NotFound
from nas_service.comparison import compare_with_seed
from nas_service.search_config import stored_reward_metric
from nas_service.store import EpisodeRecord, EpisodeStore, SearchRecord
from search_spaces import Architecture

ExportFormat = Literal["detector-config", "json"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("detector-config", "json")
LINE_WIDTH = 100


@dataclass(frozen=True)
class Exported:
    rank: int
    episode: EpisodeRecord
    filename: str
    text: str
    notes: list[str]
    """For the best cell: whether it beats the seed cell by more than the proxy's noise (else empty)."""


class NothingToExport(NotFound):
    """The search has no completed or cached episode yet."""


def export_architectures(store: EpisodeStore, search_id: int, to: ExportFormat, top: int = 1) -> list[Exported]:
    """The ``top`` best distinct architectures of the search, best first, each as one document."""
    search = store.get_search(search_id)
    episodes = store.top_episodes(search_id, top)
    if not episodes:
        raise NothingToExport(f"search {search_id} has no scored episode yet; nothing to export")
    comparison = compare_with_seed(store, search)
    exported = []
    for rank, episode in enumerate(episodes, 1):
        stem = f"search-{search_id}-rank{rank}-{episode.arch_hash[:12]}"
        notes = comparison.lines() if comparison is not None and rank == 1 else []
        if to == "json":
            name, text = f"{stem}.json", Architecture.from_dict(episode.architecture).to_json(indent=2) + "\n"
        else:
            name, text = f"{stem}.yaml", commented_config(search, episode, rank, notes)
        exported.append(Exported(rank, episode, name, text, notes))
    return exported


def bundle(exported: list[Exported], to: ExportFormat) -> str:
    """One text for several exports: a JSON list, or a YAML stream of one document per architecture."""
    if len(exported) == 1:
        return exported[0].text
    if to == "json":
        return json.dumps([json.loads(item.text) for item in exported], indent=2) + "\n"
    return "".join(f"---\n{item.text}" for item in exported)


def detector_training_config(search: SearchRecord, episode: EpisodeRecord) -> DetectorTrainingConfig:
    """The full-size training recipe around the episode's cell, on the data the search used."""
    arch = Architecture.from_dict(episode.architecture)
    proxy_dataset = search.config["proxy"]["dataset"]
    dataset = {
        key: value
        for key in ("train_annotations", "train_images", "val_annotations", "val_images", "objects365_v2_paths", "synthetic")
        if (value := proxy_dataset.get(key)) is not None
    }
    neck = NeckConfig(architecture=arch.to_dict(), levels=arch.levels)
    rpn = RPNConfig(anchor_sizes=tuple(2 ** (level + 3) for level in arch.levels))
    source = ExportSource(
        search_id=search.id,
        search_name=search.name,
        episode=episode.number,
        arch_hash=episode.arch_hash,
        reward=episode.reward,
        reward_metric=stored_reward_metric(search.config),
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return DetectorTrainingConfig(
        source=source, dataset=DatasetConfig.model_validate(dataset), detector={"neck": neck, "rpn": rpn}
    )


def commented_config(search: SearchRecord, episode: EpisodeRecord, rank: int = 1, notes: list[str] = ()) -> str:
    """The training config with a header saying where the cell comes from; ``notes`` go below it (e.g.
    whether the cell beats the search's seed architecture by more than the proxy's noise)."""
    config = detector_training_config(search, episode)
    header = [
        f"Detector config exported by nas-fpn from search {search.id} ({search.name}):",
        f"architecture rank {rank}, episode {episode.number}, proxy reward {episode.reward:.4f}, "
        f"hash {episode.arch_hash}.",
        "Cell: " + str(Architecture.from_dict(episode.architecture)),
        "The dataset is the one the search's proxy used: point it at your full training and evaluation "
        "splits. Train with `nas train -c THIS.yaml`, test with `nas eval -c THIS.yaml --checkpoint CKPT`.",
        *notes,
    ]
    lines = [f"# {line}" for text in header for line in textwrap.wrap(text, LINE_WIDTH - 2)]
    return "\n".join(lines + [""] + commented_yaml(config)) + "\n"


def commented_yaml(model: BaseModel, indent: int = 0) -> list[str]:
    """YAML lines of a pydantic model with each field's description above it as a comment."""
    pad = "  " * indent
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        if field.description:
            lines += [
                f"{pad}# {line}"
                for line in textwrap.wrap(" ".join(field.description.split()), LINE_WIDTH - len(pad) - 2)
            ]
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines += [f"{pad}{name}:", *commented_yaml(value, indent + 1)]
        else:
            lines += _yaml_value(name, to_jsonable_python(value), pad)
    return lines


def _yaml_value(name: str, value: Any, pad: str) -> list[str]:
    if isinstance(value, dict) and value:
        block = yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=LINE_WIDTH)
        return [f"{pad}{name}:", *(f"{pad}  {line}" for line in block.splitlines())]
    # JSON is YAML's flow syntax: scalars, lists and empty mappings come out on one line.
    return [f"{pad}{name}: {json.dumps(value)}"]
