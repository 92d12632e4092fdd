"""FlexTok family: coarse-to-fine 1-D register tokens per block with a rectified-flow decoder.

``FlexTok(FlexTokConfig.from_preset("flextok-tiny"))`` or ``FlexTok.from_pretrained(path)``.
"""

from .blocks import PixelStage
from .config import FAMILY, PRESETS, FlexTokConfig
from .latent import LatentStage
from .model import FlexLatents, FlexTok, FlexTokOutput, NestedDropout

__all__ = ["FAMILY", "FlexLatents", "FlexTok", "FlexTokConfig", "FlexTokOutput", "LatentStage", "NestedDropout",
           "PRESETS", "PixelStage"]
