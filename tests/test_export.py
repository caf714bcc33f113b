"""``nas export best``: the searched cell becomes a detector config that ``nas train`` loads."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from detector.engine.config import DetectorTrainingConfig
from detector.engine.model import detector_config
from detector.modeling import build_detector
from detector.modeling.nasfpn import NASFPNCell
from nas_service.cli import app
from nas_service.export import commented_yaml
from nas_service.store import EpisodeStore
from nas_service.yaml_config import load_config
from search_spaces import Architecture
from tests.seeding import search_config, seed_search

runner = CliRunner()


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{root / 'nas.db'}"
    with EpisodeStore(url) as store:
        search_id = seed_search(store, "exported", 40, root / "synthetic")
        top = store.top_episodes(search_id, 3)
    return url, root, search_id, top


def test_the_exported_config_loads_and_builds_the_detector(searched, tmp_path):
    url, _, search_id, top = searched
    out = tmp_path / "best.yaml"
    result = runner.invoke(
        app, ["export", "best", "--search", str(search_id), "--to", "detector-config", "-o", str(out), "--db", url]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    best = top[0]
    assert f"hash {best.arch_hash}" in text.replace("\n# ", " ")  # the header names the cell's hash
    assert "# Canonical hash of the exported cell." in text  # every field carries its description

    config = load_config(out, DetectorTrainingConfig)
    assert config.source.search_id == search_id and config.source.episode == best.number
    assert config.source.reward == best.reward and config.source.arch_hash == best.arch_hash
    assert Architecture.from_dict(config.detector.neck.architecture).canonical_hash() == best.arch_hash
    assert (config.detector.neck.repeats, config.detector.neck.width) == (7, 256)
    assert config.detector.cascade.box_head_resolution == 14 and config.train.short_sides == (400, 1400)
    assert config.dataset.synthetic is not None  # the data the search used, until the user points it elsewhere

    model = build_detector(detector_config(config))
    cells = [module for module in model.modules() if isinstance(module, NASFPNCell)]
    assert len(cells) == 7 and all(cell.architecture == Architecture.from_dict(best.architecture) for cell in cells)
    assert sum(parameter.numel() for parameter in model.parameters()) > 50_000_000  # R-50 + 7 x 256 cells


def test_json_export_is_the_bare_architecture(searched):
    url, _, search_id, top = searched
    result = runner.invoke(app, ["export", "best", "--search", str(search_id), "--to", "json", "--db", url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == Architecture.from_dict(top[0].architecture).to_dict()


def test_top_k_writes_one_file_per_architecture_best_first(searched, tmp_path):
    url, _, search_id, top = searched
    out = tmp_path / "cells" / "cell.json"
    result = runner.invoke(
        app, ["export", "best", "--search", str(search_id), "--to", "json", "--top", "3", "-o", str(out), "--db", url]
    )
    assert result.exit_code == 0, result.output
    hashes = [
        Architecture.from_json((tmp_path / "cells" / f"cell-{rank}.json").read_text()).canonical_hash()
        for rank in (1, 2, 3)
    ]
    assert hashes == [episode.arch_hash for episode in top]

    stream = runner.invoke(app, ["export", "best", "--search", str(search_id), "--top", "3", "--db", url])
    documents = list(yaml.safe_load_all(stream.stdout))
    assert [doc["source"]["arch_hash"] for doc in documents] == hashes


def test_export_refuses_what_it_cannot_export(searched, tmp_path):
    url, root, _, _ = searched
    with EpisodeStore(url) as store:
        empty = store.create_search(
            "nothing-yet", search_config(root / "synthetic", episodes=2).model_dump(mode="json")
        ).id
    cases = [
        (["--search", str(empty)], f"search {empty} has no scored episode yet"),
        (["--search", "999"], "search 999 does not exist"),
        (["--search", str(empty), "--to", "onnx"], "--to: expected one of detector-config, json, got 'onnx'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["export", "best", *args, "--db", url])
        assert result.exit_code == 2 and message in result.output, result.output


def test_commented_yaml_round_trips_every_default():
    config = DetectorTrainingConfig.model_validate({"dataset": {"synthetic": {"root": "/data/synthetic"}}})
    text = "\n".join(commented_yaml(config))
    assert DetectorTrainingConfig.model_validate(yaml.safe_load(text)) == config
    fields = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert len(comments) >= len(fields) * 0.9  # nearly every setting is explained
