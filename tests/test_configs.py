from pathlib import Path

import pytest

from controller import ControllerConfig
from controller.controller import Controller
from nas_service.configs import ConfigError, load_config

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
