"""Reading tokcal's YAML files with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokcal.errors import TokcalError
from tokcal.io import read_text


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping; a missing file or bad YAML is a :class:`TokcalError`."""
    import yaml

    p = Path(path)
    text = read_text(p, "config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TokcalError(f"{p} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TokcalError(f"expected a mapping at the top of {p}, got {type(data).__name__}")
    return data


def load_json_object(path: str | Path) -> dict[str, Any]:
    """Load a JSON file whose top level is an object; problems are one-line errors."""
    import json

    p = Path(path)
    text = read_text(p)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TokcalError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TokcalError(f"expected a JSON object at the top of {p}, got {type(data).__name__}")
    return data
