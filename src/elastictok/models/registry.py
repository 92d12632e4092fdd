"""Model families by name, and loading any saved model with the class its ``config.json`` names.

A new family registers here: its model class in ``FAMILIES`` (``CONFIGS`` follows from its
``config_class``) and its presets dict in ``FAMILY_PRESETS``. ``PRESETS`` holds every family's presets by
name (names are unique across families, so a training config's ``model: flextok-tiny`` picks FlexTok).
Directories saved before families existed have no ``family`` key and load as ElasticTok.
"""

from __future__ import annotations

import os

import torch

from ..errors import ElasticTokError
from .elastictok.config import PRESETS as ELASTICTOK_PRESETS
from .elastictok.model import ElasticTok
from .files import CONFIG_NAME, read_config_json
from .flextok.config import PRESETS as FLEXTOK_PRESETS
from .flextok.model import FlexTok
from .pretrained import BUNDLED_DIR, DEFAULT_MODEL, bundled_models, resolve_model_path

FAMILIES: dict[str, type] = {ElasticTok.family: ElasticTok, FlexTok.family: FlexTok}
CONFIGS: dict[str, type] = {family: model.config_class for family, model in FAMILIES.items()}
FAMILY_PRESETS: dict[str, dict] = {ElasticTok.family: ELASTICTOK_PRESETS, FlexTok.family: FLEXTOK_PRESETS}
PRESETS: dict = {name: config for presets in FAMILY_PRESETS.values() for name, config in presets.items()}


def family_of_preset(preset: str) -> str:
    """The family whose presets include ``preset``."""
    if preset not in PRESETS:
        raise ElasticTokError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return model_class_for(PRESETS[preset]).family


def config_from_preset(preset: str, **overrides):
    """The config of any family's preset, with overrides."""
    return CONFIGS[family_of_preset(preset)].from_preset(preset, **overrides)


def model_class_for(config) -> type:
    """The model class that takes ``config`` (an instance of a registered config class)."""
    for family, config_class in CONFIGS.items():
        if isinstance(config, config_class):
            return FAMILIES[family]
    raise ElasticTokError(f"no registered model family takes a {type(config).__name__}")


def family_of(name_or_path: str | os.PathLike) -> str:
    """The family a saved model directory (or bundled name) belongs to."""
    directory = resolve_model_path(name_or_path)
    family = read_config_json(directory)[1]
    if family not in FAMILIES:
        raise ElasticTokError(f"{directory / CONFIG_NAME}: unknown model family {family!r}; "
                              f"known: {', '.join(FAMILIES)}")
    return family


def from_pretrained(name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Load a saved model of any registered family; never downloads."""
    return FAMILIES[family_of(name_or_path)].from_pretrained(name_or_path, map_location)


def bundled_model_for(family: str, config_hash: str) -> str:
    """The bundled model whose family and config made tokens (a token file names both), else the default."""
    for name in bundled_models():
        directory = BUNDLED_DIR / name
        if family_of(directory) == family and FAMILIES[family].read_config(directory).fingerprint() == config_hash:
            return name
    return DEFAULT_MODEL
