"""elastictok: adaptive-length tokenization of images and video (ElasticTok, Yan et al., ICLR 2025).

The public API, re-exported from the layers that define it (docs/architecture.md):

    model = ElasticTok.from_pretrained("default")          # or elastictok.from_pretrained(...) for any family
    flex = FlexTok(FlexTokConfig.from_preset("flextok-tiny"))  # the coarse-to-fine family, same API
    encoded = model.tokenize("clip.mp4", "psnr:30")         # one path -> one TokenizedVideo
    batch = model.tokenize(videos, Threshold("mse", 0.003))  # a batch or a list -> a list
    write_etok("clip.etok", encoded, model.codebook_size)
    video = model.detokenize("clip.etok")
"""

import importlib
from typing import TYPE_CHECKING

from .errors import ElasticTokError

if TYPE_CHECKING:
    from ._api import *  # noqa: F403 (what __getattr__ loads, for type checkers and editors)

__all__ = [
    "Budget", "ElasticTok", "ElasticTokConfig", "ElasticTokError", "ElasticTokOutput", "FAMILIES", "FlexTok",
    "FlexTokConfig", "Latents",
    "ModelFamily", "PRESETS", "Target", "Threshold", "TokenCount", "TokenizeOptions", "TokenizedVideo",
    "detokenize", "etok_bytes", "from_pretrained", "parse_etok", "parse_target", "read_etok", "tokenize",
    "write_etok",
]
__version__ = "0.1.0"


_LAYERS = ["cli", "errors", "evaluation", "layers", "media", "metrics", "models", "tokenization", "training", "utils"]


def __getattr__(name: str):
    """The public API loads on first use, since it imports torch (seconds): so ``import elastictok`` is
    instant, and the command line answers ``--help`` and bad arguments at once. The layers' packages
    (``elastictok.models`` ...) load on first use too."""
    if name in _LAYERS:
        return importlib.import_module(f".{name}", __name__)
    if name not in __all__:
        raise AttributeError(f"module 'elastictok' has no attribute {name!r}")
    from . import _api

    globals().update({export: getattr(_api, export) for export in __all__})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_LAYERS})
