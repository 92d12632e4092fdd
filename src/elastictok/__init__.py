"""elastictok: adaptive-length tokenization of images and video (ElasticTok, Yan et al., ICLR 2025)."""

from .models.elastictok.config import PRESETS, ElasticTokConfig
from .errors import ElasticTokError
from .models.elastictok.model import ElasticTok, ElasticTokOutput, Latents

__all__ = ["ElasticTok", "ElasticTokConfig", "ElasticTokError", "ElasticTokOutput", "Latents", "PRESETS"]
__version__ = "0.1.0"
