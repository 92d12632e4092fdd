"""Where named models and sample media live: inside the package, never fetched from a network."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ElasticTokError

BUNDLED_DIR = Path(__file__).parent.parent / "weights"
ASSETS_DIR = Path(__file__).parent.parent / "assets"
# The model every command and ``from_pretrained(DEFAULT_MODEL)`` use when none is named: the default preset at half
# width trained with Muon, ahead of the full-width `default` (kept: its token files and comparisons name it).
DEFAULT_MODEL = "default-narrow"


def sample_video() -> Path:
    """The short real clip bundled with the package (licence: ``assets/README.md``)."""
    return ASSETS_DIR / "street.mp4"


def bundled_models() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A ``save_pretrained`` directory, or the name of a bundled model."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in bundled_models():
        return BUNDLED_DIR / str(name_or_path)
    bundled = ", ".join(bundled_models()) or "none"
    raise ElasticTokError(f"no model directory or bundled model named {str(name_or_path)!r} (bundled: {bundled}); "
                          "nothing is downloaded")
