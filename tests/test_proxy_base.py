import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from nas_errors import UserError
from nas_service.cli import app
from proxy_trainer import ProxyConfig
from proxy_trainer.base import base_key, make_base, prepare_base, read_base
from proxy_trainer.fit import fit, training_set
from proxy_trainer.trainer import _episode_model, train_proxy
from search_spaces import fpn, nasfpn
from tests.test_proxy import tiny_proxy_config

LEVELS = (2, 3, 4, 5, 6)


def with_base(config: ProxyConfig, detector: dict | None = None, dataset: dict | None = None, **base) -> ProxyConfig:
    """``config`` with a ``base`` section and, optionally, some detector or synthetic-dataset settings changed."""
    data = config.model_dump(mode="json")
    data["base"] = {"iterations": 3, **base}
    for section, fields in (detector or {}).items():
        data["detector"][section].update(fields)
    data["dataset"]["synthetic"].update(dataset or {})
    return ProxyConfig.model_validate(data)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("base")


@pytest.fixture(scope="module")
def built(tmp) -> tuple[ProxyConfig, Path]:
    """A tiny base file, made once, and a config that names it."""
    path = tmp / "base.pt"
    config = with_base(tiny_proxy_config(tmp / "synthetic"), path=str(path), load=["backbone", "pyramid", "rpn"])
    make_base(config, path, threads=1)
    return config, path


def training_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "proxy_trainer" and "iteration" in r.getMessage()]


def test_a_base_is_saved_with_its_held_out_metrics_and_what_it_depends_on(built):
    config, path = built
    base = read_base(path)
    assert set(base.metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and 0 <= base.metrics["AP"] <= 1
    assert {key.split(".")[0] for key in base.state} == {"backbone", "pyramid", "rpn", "roi_heads"}
    train_annotations = config.dataset.paths().train_annotations
    assert base.depends["dataset.train_annotations"] == hashlib.sha256(train_annotations.read_bytes()).hexdigest()
    assert base.depends["backbone.depth"] == 18 and base.depends["neck.fpn_channels"] == 16
    assert base.key == base_key(base.depends) == hashlib.sha256(json.dumps(base.depends, sort_keys=True).encode()).hexdigest()


def test_an_episode_loads_the_base_and_trains_only_what_is_not_frozen(built):
    config, path = built
    base = prepare_base(config, config.dataset.paths())
    model, frozen = _episode_model(config, nasfpn(LEVELS), 3, base)
    state = model.state_dict()
    for part in ("backbone", "pyramid", "rpn"):
        assert all(torch.equal(state[k], base.state[k]) for k in state if k.startswith(part + "."))
    assert not all(torch.equal(state[k], base.state[k]) for k in state if k.startswith("roi_heads."))

    train = config.train.model_copy(update={"iterations": 2, "learning_rate": 0.5})
    fit(model, training_set(config.dataset, train), train, torch.device("cpu"), [], frozen)
    after = model.state_dict()
    frozen_keys = [k for k in after if k.startswith(("backbone.", "pyramid."))]
    assert any("running_mean" in k for k in frozen_keys)  # BN statistics are among what stays the base's
    assert all(torch.equal(after[k], base.state[k]) for k in frozen_keys)
    assert not all(torch.equal(after[k], base.state[k]) for k in after if k.startswith("rpn."))

    result = train_proxy(nasfpn(LEVELS), config.model_copy(update={"train": config.train.model_copy(update={"iterations": 1})}))
    frozen_params = sum(p.numel() for p in (*model.backbone.parameters(), *model.pyramid.parameters()))
    assert result.status == "completed" and str(path) in result.base
    assert result.trainable_params == result.detector_params - frozen_params


@pytest.mark.parametrize(
    "change, field",
    [
        ({"detector": {"neck": {"fpn_channels": 32}}}, "neck.fpn_channels: 16 there, 32 here"),
        ({"detector": {"backbone": {"depth": 34}}}, "backbone.depth: 18 there, 34 here"),
        ({"detector": {"rpn": {"anchor_sizes": [4, 8, 16, 32, 64]}}}, "rpn.anchor_sizes"),
        ({"dataset": {"seed": 1, "root": "other"}}, "dataset.train_annotations: sha256"),
    ],
    ids=["fpn-width", "backbone", "rpn", "dataset"],
)
def test_a_base_made_for_other_settings_is_refused_before_training(built, tmp, caplog, change, field):
    config, path = built
    if "dataset" in change:
        change = {"dataset": {**change["dataset"], "root": str(tmp / "other")}}
    changed = with_base(config, **change, path=str(path), load=["backbone", "pyramid", "rpn"])
    caplog.set_level(logging.INFO, logger="proxy_trainer")
    with pytest.raises(UserError, match="made for other settings") as error:
        train_proxy(fpn(LEVELS), changed)
    assert field in str(error.value) and str(path) in str(error.value)
    assert training_messages(caplog) == []


def test_settings_no_loaded_part_depends_on_may_differ(built):
    config, path = built
    changed = with_base(config, detector={"cascade": {"fc_dim": 24}}, path=str(path), load=["backbone", "pyramid"])
    changed = changed.model_copy(update={"train": changed.train.model_copy(update={"iterations": 1})})
    assert train_proxy(fpn(LEVELS), changed).status == "completed"


def test_a_missing_base_file_says_how_to_make_it(built, tmp, caplog):
    config, _ = built
    missing = tmp / "nowhere" / "base.pt"
    caplog.set_level(logging.INFO, logger="proxy_trainer")
    with pytest.raises(UserError, match=rf"base.path: {missing} does not exist; make it with `nas proxy base -c"):
        train_proxy(fpn(LEVELS), with_base(config, path=str(missing)))
    assert training_messages(caplog) == []


def test_a_file_that_is_not_a_base_is_refused(built, tmp):
    config, _ = built
    (tmp / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read as a proxy base"):
        train_proxy(fpn(LEVELS), with_base(config, path=str(tmp / "weights.pt")))
    torch.save({"model": {}}, tmp / "other.pt")
    with pytest.raises(UserError, match="not a proxy base"):
        train_proxy(fpn(LEVELS), with_base(config, path=str(tmp / "other.pt")))


def test_a_base_without_a_path_is_built_on_first_use_and_cached_by_what_it_depends_on(built, tmp, caplog):
    config, _ = built
    cache = tmp / "cache"
    short = config.train.model_copy(update={"iterations": 1})
    cached = with_base(config, cache_dir=str(cache)).model_copy(update={"train": short})
    caplog.set_level(logging.INFO, logger="proxy_trainer")
    assert train_proxy(fpn(LEVELS), cached).status == "completed"
    [first] = cache.glob("base-*.pt")
    stamp = first.stat().st_mtime_ns
    assert first.name == f"base-{read_base(first).key[:16]}.pt"
    assert sum("proxy base: training" in r.getMessage() for r in caplog.records) == 1

    assert train_proxy(nasfpn(LEVELS), cached).status == "completed"
    assert list(cache.glob("base-*.pt")) == [first] and first.stat().st_mtime_ns == stamp
    assert sum("proxy base: training" in r.getMessage() for r in caplog.records) == 1

    longer = with_base(config, cache_dir=str(cache), iterations=4).model_copy(update={"train": short})
    assert train_proxy(fpn(LEVELS), longer).status == "completed"
    assert len(list(cache.glob("base-*.pt"))) == 2


def test_cli_makes_a_base_and_refuses_a_mismatched_one(built, tmp):
    config, _ = built
    config_path, out = tmp / "proxy.yaml", tmp / "cli-base.pt"
    data = with_base(config, path=str(out)).model_dump(mode="json")
    config_path.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    made = runner.invoke(app, ["proxy", "base", "-c", str(config_path), "--threads", "1"])
    assert made.exit_code == 0, made.output
    assert f"base:       {out}" in made.output and "metrics:    AP " in made.output and out.exists()

    data["detector"]["neck"]["fpn_channels"] = 32
    config_path.write_text(yaml.safe_dump(data))
    refused = runner.invoke(app, ["proxy", "-c", str(config_path), "--threads", "1"])
    assert refused.exit_code == 2
    assert "neck.fpn_channels: 16 there, 32 here" in refused.output and "Traceback" not in refused.output
