"""Reading the JSON files fptquant writes (recipes, checkpoint configs and indexes) with errors that name them."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: str | Path, what: str, error: type[Exception]) -> dict:
    """The JSON object in ``path``; ``error`` (naming ``what`` and the path) if it is missing, unreadable,
    not JSON, or not an object."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} holds a JSON {type(data).__name__}, not an object")
    return data
