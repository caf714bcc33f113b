from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from controller import ControllerConfig
from controller.controller import Controller
from nas_service.search_config import SearchConfig, load_search_config
from nas_service.yaml_config import ConfigError, load_config
from search_spaces import fpn, nasfpn
from tests.seeding import LEVELS
from tests.test_proxy import tiny_proxy_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "controller").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_controller_configs_load_and_build(path):
    config = load_config(path, ControllerConfig)
    controller = Controller(config)
    assert controller.seed_probability >= config.seed_target_probability


def test_unknown_and_bad_fields_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algoritm: ppo\nbatch_size: -1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, ControllerConfig)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert "algoritm: Extra inputs are not permitted" in message
    assert "batch_size: Input should be greater than or equal to 1" in message


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", ControllerConfig)
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings, got list"):
        load_config(path, ControllerConfig)


def test_a_config_file_may_name_an_architecture_file_relative_to_itself(tmp_path, monkeypatch):
    """The file is read in when the YAML loads; the validated config holds the cell inline."""
    cells = tmp_path / "configs" / "cells"
    cells.mkdir(parents=True)
    (cells / "seed.json").write_text(nasfpn().to_json())
    (cells / "base.json").write_text(fpn(LEVELS).to_json())
    (cells / "controller.yaml").write_text("seed_architecture: seed.json\n")
    proxy = tiny_proxy_config(tmp_path / "data").model_dump(mode="json")
    proxy["detector"]["neck"]["architecture"] = "base.json"
    proxy["base"] = {"architecture": "base.json"}
    (cells / "proxy.yaml").write_text(yaml.safe_dump(proxy))
    controller = {"levels": list(LEVELS), "seed_architecture": "cells/seed-p2.json"}
    search = {"controller": controller, "proxy": "cells/proxy.yaml"}
    (cells / "seed-p2.json").write_text(nasfpn(LEVELS).to_json())
    (tmp_path / "configs" / "search.yaml").write_text(yaml.safe_dump(search))
    monkeypatch.chdir(tmp_path / "configs")  # the proxy file's own path is relative to the working directory

    assert load_config(cells / "controller.yaml", ControllerConfig).seed_architecture == nasfpn().to_dict()
    config = load_search_config(tmp_path / "configs" / "search.yaml")
    assert config.controller.seed_architecture == nasfpn(LEVELS).to_dict()
    assert config.proxy.detector.neck.architecture == config.proxy.base.architecture == fpn(LEVELS).to_dict()
    # Outside a config file, a path is refused without being opened.
    with pytest.raises(ValueError, match="'seed.json' is not a known architecture"):
        ControllerConfig(seed_architecture="seed.json")
    missing = cells / "controller.yaml"
    missing.write_text("seed_architecture: gone.json\n")
    with pytest.raises(ConfigError, match=f"seed_architecture: {cells / 'gone.json'}: cannot read"):
        load_config(missing, ControllerConfig)


def test_the_pyramid_levels_are_stated_once_in_the_proxy_neck(tmp_path):
    proxy = tiny_proxy_config(tmp_path / "data").model_dump(mode="json")
    config = SearchConfig.model_validate({"proxy": proxy})
    assert config.controller.levels == LEVELS == tuple(proxy["detector"]["neck"]["levels"])
    # A stored search config (every one so far) states both; it loads as it was.
    stored = config.model_dump(mode="json")
    assert stored["controller"]["levels"] == list(LEVELS)
    assert SearchConfig.model_validate(stored) == config
    stored["controller"]["levels"] = [3, 4, 5, 6, 7]
    with pytest.raises(ValidationError, match=r"controller.levels: \[3, 4, 5, 6, 7\] must equal .*proxy.detector.neck"):
        SearchConfig.model_validate(stored)
