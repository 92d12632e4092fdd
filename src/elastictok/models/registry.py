"""Model families by name, and loading any saved model with the class its ``config.json`` names.

A new family registers here: import its class and add it to ``FAMILIES``. Directories saved
before families existed have no ``family`` key and load as ElasticTok.
"""

from __future__ import annotations

import json
import os

import torch

from ..errors import ElasticTokError
from .elastictok.model import CONFIG_NAME, ElasticTok
from .pretrained import resolve_model_path

FAMILIES: dict[str, type] = {ElasticTok.family: ElasticTok}
DEFAULT_FAMILY = ElasticTok.family


def family_of(name_or_path: str | os.PathLike) -> str:
    """The family a saved model directory (or bundled name) belongs to."""
    path = resolve_model_path(name_or_path) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ElasticTokError(f"{path}: not a readable model config ({exc})") from None
    family = data.get("family", DEFAULT_FAMILY) if isinstance(data, dict) else DEFAULT_FAMILY
    if family not in FAMILIES:
        raise ElasticTokError(f"{path}: unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return family


def from_pretrained(name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Load a saved model of any registered family; never downloads."""
    return FAMILIES[family_of(name_or_path)].from_pretrained(name_or_path, map_location)
