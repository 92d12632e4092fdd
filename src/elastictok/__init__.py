"""elastictok: adaptive-length tokenization of images and video (ElasticTok, Yan et al., ICLR 2025).

The public API, re-exported from the layers that define it (docs/architecture.md):

    model = ElasticTok.from_pretrained("default")          # or elastictok.from_pretrained(...) for any family
    flex = FlexTok(FlexTokConfig.from_preset("flextok-tiny"))  # the coarse-to-fine family, same API
    encoded = model.tokenize("clip.mp4", "psnr:30")         # one path -> one TokenizedVideo
    batch = model.tokenize(videos, Threshold("mse", 0.003))  # a batch or a list -> a list
    write_etok("clip.etok", encoded, model.codebook_size)
    video = model.detokenize("clip.etok")
"""

from .errors import ElasticTokError
from .models.base import ModelFamily
from .models.elastictok.config import PRESETS, ElasticTokConfig
from .models.elastictok.model import ElasticTok, ElasticTokOutput, Latents
from .models.flextok import FlexTok, FlexTokConfig
from .models.registry import FAMILIES, from_pretrained
from .tokenization.options import TokenizeOptions
from .tokenization.targets import Budget, Target, Threshold, TokenCount, parse_target
from .tokenization.tokenfile import TokenizedVideo, etok_bytes, parse_etok, read_etok, write_etok
from .tokenization.tokenizer import detokenize, tokenize

__all__ = [
    "Budget", "ElasticTok", "ElasticTokConfig", "ElasticTokError", "ElasticTokOutput", "FAMILIES", "FlexTok",
    "FlexTokConfig", "Latents",
    "ModelFamily", "PRESETS", "Target", "Threshold", "TokenCount", "TokenizeOptions", "TokenizedVideo",
    "detokenize", "etok_bytes", "from_pretrained", "parse_etok", "parse_target", "read_etok", "tokenize",
    "write_etok",
]
__version__ = "0.1.0"
