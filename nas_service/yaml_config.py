"""Load YAML config files into their pydantic models, with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from nas_errors import UserError
from search_spaces.space import ARCHITECTURE_FOLDER

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(UserError):
    """A config file that cannot be read or does not validate."""


def load_config(path: Path, model: type[Model]) -> Model:
    return validate_config(path, read_yaml(path), model)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file's mapping (an empty file is an empty mapping)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text file (byte {error.start} is not UTF-8)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(error, 'problem', error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def validate_config(path: Path, data: dict[str, Any], model: type[Model]) -> Model:
    """``data`` read from the file ``path``: architecture files it names are read relative to the file."""
    try:
        return model.model_validate(data, context={ARCHITECTURE_FOLDER: path.parent})
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_validation_error(error)}") from None


def describe_validation_error(error: ValidationError) -> str:
    """``field.path: message`` for every problem; checks across fields already name theirs."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        location = ".".join(str(part) for part in item["loc"])
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)
