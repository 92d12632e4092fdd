"""Model configuration: one dataclass, named presets (timm-style)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ...errors import ElasticTokError
from ...utils.fields import short_repr
from ..base import MAX_TOKENS_PER_BLOCK, ConfigFile


MAX_RESOLUTION = 8192  # pixels per side: larger frames would not fit in memory at any batch
MAX_FSQ_LEVEL = 2**16  # levels of one FSQ channel (bounded in float32, exact to 2^24)
MAX_CODEBOOK = 2**62  # codes per token: FSQ indices are int64


@dataclass
class ElasticTokConfig(ConfigFile):
    """Everything that fixes an ElasticTok model's shape and numerics.

    Derived quantities (tokens per block, patch dimension, the default Mmin) are
    properties or filled in by ``__post_init__`` so they cannot disagree with the
    fields they come from.
    """

    # Fields added after token files were first written, with the value every earlier model had.
    fields_added_later: ClassVar[dict[str, Any]] = {
        "encoder_mask_conditioning": True, "output_head": "linear", "head_channels": 32, "input_stem": "linear",
        "stem_channels": 16, "ffn_conv": False}

    resolution: tuple[int, int] = (64, 64)  # (H, W) of every frame
    frames_per_block: int = 4
    patch_size: tuple[int, int, int] = (2, 8, 8)  # (Tp, Hp, Wp)
    width: int = 256
    encoder_depth: int = 4
    decoder_depth: int = 4
    num_heads: int = 4
    mlp_width: int = 512
    rope_theta: float = 5e7
    norm_eps: float = 1e-5
    init_std: float = 0.02
    bottleneck: Literal["fsq", "vae"] = "fsq"
    fsq_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    vae_latent_dim: int = 8
    kl_weight: float = 1e-8
    min_tokens: int | None = None  # Mmin; default: tokens_per_block // 16
    # The original adds a learned "kept" or "masked" embedding to every encoder input. Without it the
    # encoder never sees the mask, so one encoder pass serves every kept count (paper, Table 5).
    encoder_mask_conditioning: bool = True
    # "linear": each token's features become its patch's pixels (the original). "conv": they become
    # head_channels feature maps per pixel, mixed across patch borders by two 3x3 convolutions per
    # frame, which removes the patch-grid seams at a small cost.
    output_head: Literal["linear", "conv"] = "linear"
    head_channels: int = 32
    # "linear": each patch's pixels are projected to its token (the original). "conv": two 3x3
    # convolutions per frame first turn the pixels into stem_channels feature maps, so a token also
    # sees its neighbours' border pixels (an overlapping patch embedding, the output head's mirror).
    input_stem: Literal["linear", "conv"] = "linear"
    stem_channels: int = 16
    # A depthwise 3x3 convolution over each frame's token grid inside every feed-forward layer: local
    # mixing that attention over a 1-D RoPE order must otherwise learn (LeanVAE's neighbourhood-aware FFN).
    ffn_conv: bool = False
    # Context blocks the tokenizer caches by default (None: all). Positions beyond the clips a model
    # was trained on extrapolate: a model trained on n-block clips does best with n - 1.
    window: int | None = 16
    name: str = "custom"

    def __post_init__(self) -> None:
        self.check_field_types()  # also turns JSON's lists back into tuples
        self._validate_sizes()  # before anything divides by them
        if self.min_tokens is None:
            self.min_tokens = max(1, self.tokens_per_block // 16)
        self.validate()

    # ---- derived -------------------------------------------------------------
    @property
    def patch_grid(self) -> tuple[int, int]:
        """Patches per frame, (H / Hp, W / Wp): the tokens of one patch-time step."""
        return self.resolution[0] // self.patch_size[1], self.resolution[1] // self.patch_size[2]

    @property
    def tokens_per_block(self) -> int:
        """Mmax: one latent token per (Tp, Hp, Wp) patch of a block."""
        gh, gw = self.patch_grid
        return (self.frames_per_block // self.patch_size[0]) * gh * gw

    @property
    def patch_dim(self) -> int:
        tp, hp, wp = self.patch_size
        return tp * hp * wp * 3

    @property
    def latent_dim(self) -> int:
        """Channels of one latent token after the bottleneck."""
        return len(self.fsq_levels) if self.bottleneck == "fsq" else self.vae_latent_dim

    @property
    def pre_quant_dim(self) -> int:
        """Channels the encoder projects to before the bottleneck (mean and logvar for the VAE)."""
        return self.latent_dim if self.bottleneck == "fsq" else 2 * self.vae_latent_dim

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def _validate_sizes(self) -> None:
        """Every size is a whole number within ``SIZE_LIMITS`` (so that nothing divides by zero, and nothing
        overflows or asks for terabytes when the layers are built); depths may be 0."""
        problems = self.size_problems()
        if len(self.patch_size) != 3 or not 1 <= min(self.patch_size, default=0) <= max(self.patch_size) \
                <= MAX_RESOLUTION:
            problems.append(f"patch_size must be three integers (Tp, Hp, Wp) in [1, {MAX_RESOLUTION}], "
                            f"got {self.patch_size}")
        if len(self.resolution) != 2 or not 1 <= min(self.resolution) <= max(self.resolution) <= MAX_RESOLUTION:
            problems.append(f"resolution must be two integers (H, W) in [1, {MAX_RESOLUTION}], got {self.resolution}")
        if self.bottleneck == "fsq" and not self.fsq_levels:
            problems.append("fsq_levels must not be empty")
        elif self.bottleneck == "fsq" and (max(self.fsq_levels) > MAX_FSQ_LEVEL
                                           or math.prod(self.fsq_levels) > MAX_CODEBOOK):
            problems.append(f"fsq_levels must each be at most {MAX_FSQ_LEVEL} and give at most 2^62 codes, "
                            f"got {short_repr(self.fsq_levels)}")
        if problems:
            raise ElasticTokError("invalid ElasticTokConfig: " + "; ".join(problems))

    def validate(self) -> None:
        self._validate_sizes()
        tp, hp, wp = self.patch_size
        h, w = self.resolution
        problems = []
        if self.frames_per_block % tp:
            problems.append(f"frames_per_block {self.frames_per_block} is not divisible by Tp={tp}")
        if h % hp or w % wp:
            problems.append(f"resolution {h}x{w} is not divisible by the patch {hp}x{wp}")
        if self.width % self.num_heads or self.head_dim % 2:
            problems.append(f"width {self.width} must split into {self.num_heads} heads of even size")
        if not (self.rope_theta > 0 and self.norm_eps > 0 and self.init_std > 0 and self.kl_weight >= 0):
            problems.append(f"rope_theta, norm_eps and init_std must be > 0 and kl_weight >= 0, got {self.rope_theta}, "
                            f"{self.norm_eps}, {self.init_std} and {self.kl_weight}")
        if self.bottleneck not in ("fsq", "vae"):
            problems.append(f"bottleneck must be 'fsq' or 'vae', got {self.bottleneck!r}")
        if self.bottleneck == "fsq" and any(level < 2 for level in self.fsq_levels):
            problems.append(f"fsq_levels must all be >= 2, got {self.fsq_levels}")
        for field_name in ("output_head", "input_stem"):
            if getattr(self, field_name) not in ("linear", "conv"):
                problems.append(f"{field_name} must be 'linear' or 'conv', got {getattr(self, field_name)!r}")
        if self.window is not None and self.window < 1:
            problems.append(f"window must be at least 1 block or None, got {self.window}")
        if self.tokens_per_block < 1:
            problems.append(f"a block of {self.frames_per_block}x{h}x{w} holds no whole {tp}x{hp}x{wp} patch")
        elif self.tokens_per_block > MAX_TOKENS_PER_BLOCK:
            problems.append(f"a block of {self.tokens_per_block} tokens is more than {MAX_TOKENS_PER_BLOCK}")
        elif not 1 <= self.min_tokens <= self.tokens_per_block:
            problems.append(f"min_tokens {self.min_tokens} must lie in [1, {self.tokens_per_block}]")
        if problems:
            raise ElasticTokError("invalid ElasticTokConfig: " + "; ".join(problems))

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "ElasticTokConfig":
        """A named preset with fields replaced; a derived Mmin is derived again from the new shape."""
        if preset not in PRESETS:
            raise ElasticTokError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        cls.refuse_unknown(overrides)
        base = PRESETS[preset]
        if "min_tokens" not in overrides and base.min_tokens == max(1, base.tokens_per_block // 16):
            overrides = {**overrides, "min_tokens": None}  # replace() would keep the old derived value
        return dataclasses.replace(base, **overrides)


def _preset(**kwargs: Any) -> ElasticTokConfig:
    return ElasticTokConfig(**kwargs)


PRESETS: dict[str, ElasticTokConfig] = {
    # The original release's 200M models (method.md), so their checkpoints load unchanged.
    "official-fsq-200m": _preset(
        name="official-fsq-200m", resolution=(256, 256), frames_per_block=4, patch_size=(1, 8, 8),
        width=1024, encoder_depth=10, decoder_depth=10, num_heads=8, mlp_width=2048,
        rope_theta=5e7, bottleneck="fsq", fsq_levels=(8, 8, 8, 5, 5, 5),
    ),
    "official-vae-200m": _preset(
        name="official-vae-200m", resolution=(256, 256), frames_per_block=4, patch_size=(2, 8, 8),
        width=1024, encoder_depth=10, decoder_depth=10, num_heads=8, mlp_width=2048,
        rope_theta=5e6, bottleneck="vae", vae_latent_dim=8, kl_weight=1e-8,
    ),
    # CPU-trainable presets.
    "tiny": _preset(
        name="tiny", resolution=(64, 64), frames_per_block=4, patch_size=(2, 8, 8),
        width=256, encoder_depth=4, decoder_depth=4, num_heads=4, mlp_width=512,
    ),
    # The bundled default model: 64x64, 4-frame blocks, 1x8x8 patches (256 tokens per block, 64 per
    # frame), FSQ 8^6 = 2^18 codes per token (a language model's vocabulary holds it), a conv output
    # head (no patch-grid seams) and an encoder without mask conditioning (one pass serves every count).
    "default": _preset(
        name="default", resolution=(64, 64), frames_per_block=4, patch_size=(1, 8, 8),
        width=256, encoder_depth=4, decoder_depth=4, num_heads=4, mlp_width=512, fsq_levels=(8,) * 6,
        encoder_mask_conditioning=False, output_head="conv", head_channels=32,
        window=1,  # trained on 2-block clips
    ),
    "tiny-vae": _preset(
        name="tiny-vae", resolution=(64, 64), frames_per_block=4, patch_size=(2, 8, 8),
        width=256, encoder_depth=4, decoder_depth=4, num_heads=4, mlp_width=512,
        rope_theta=5e6, bottleneck="vae",
    ),
    "small": _preset(
        name="small", resolution=(128, 128), frames_per_block=4, patch_size=(2, 8, 8),
        width=384, encoder_depth=6, decoder_depth=6, num_heads=6, mlp_width=768,
    ),
    # For unit tests: seconds to build and run.
    "micro": _preset(
        name="micro", resolution=(32, 32), frames_per_block=2, patch_size=(1, 8, 8),
        width=32, encoder_depth=1, decoder_depth=1, num_heads=2, mlp_width=64,
    ),
}
