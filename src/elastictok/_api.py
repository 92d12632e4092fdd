"""The public API, re-exported from the layers that define it (docs/architecture.md); ``elastictok`` loads
it on first use (``__all__`` there names what it exports)."""

from .errors import ElasticTokError
from .models.base import ModelFamily
from .models.elastictok.config import ElasticTokConfig
from .models.elastictok.model import ElasticTok, ElasticTokOutput, Latents
from .models.flextok import FlexTok, FlexTokConfig
from .models.registry import FAMILIES, PRESETS, from_pretrained
from .tokenization.options import TokenizeOptions
from .tokenization.targets import Budget, Target, Threshold, TokenCount, parse_target
from .tokenization.tokenfile import TokenizedVideo, etok_bytes, parse_etok, read_etok, write_etok
from .tokenization.tokenizer import detokenize, tokenize
