"""FlexTok's latent input stage: a small continuous video autoencoder, causal in time, trained alone with MSE.

FlexTok (Bachmann et al., arXiv 2502.13967, sec. 3) runs its flow over a frozen VAE's latents, not pixels;
this is that VAE for our block sizes: plain 3-D convolutions (``CausalConv3d``: a frame never sees a later
frame), per-frame GroupNorm, SiLU and residual pairs. The outermost 2x2 of the spatial downsampling is a
space-to-depth reshape (as Cosmos' tokenizer patchifies first), so no convolution runs at full resolution.
A 4-frame 64x64 block in [-1, 1] becomes (2, 8, 16, 16) latents at the default shape (2x in time, 4x in
space, 8 channels). ``scale`` (set from the data after training) brings the latents to about unit
variance, so that the flow's noise level means what it means in pixels.

Shapes: B batch, T frames, C channels, H and W pixels; a prime marks the latent grid.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ...errors import ElasticTokError
from ...utils.fileio import atomic_path, check_input_file, read_small_file
from ...utils.runtime import interrupts_held
from ..files import check_stored_shapes

WEIGHTS_NAME = "stage.safetensors"
SHAPE_NAME = "stage.json"  # the shape fields (channels, factors, width) and what training cost
SHAPE_FIELDS = ("channels", "factors", "width")


class CausalConv3d(nn.Module):
    """A 3x3x3 convolution on (B, C, T, H, W) whose output frame j sees input frames up to the last of its
    stride group only: the temporal padding (the first frame repeated) is all on the past side."""

    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.time_pad = 3 - stride[0]  # output j reads frames (j+1)*st - 3 .. (j+1)*st - 1
        self.conv = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 0, 0, 0, self.time_pad, 0), mode="replicate"))


class FrameNorm(nn.GroupNorm):
    """GroupNorm over each frame on its own (over the whole clip, a frame's statistics would see later frames)."""

    def __init__(self, channels: int):
        super().__init__(math.gcd(8, channels), channels)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        return rearrange(super().forward(frames), "(b t) c h w -> b c t h w", b=b)


class ResidualPair(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), the second convolution starting at zero."""

    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(FrameNorm(width), nn.SiLU(), CausalConv3d(width, width),
                                    FrameNorm(width), nn.SiLU(), CausalConv3d(width, width))
        nn.init.zeros_(self.layers[-1].conv.weight)
        nn.init.zeros_(self.layers[-1].conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by ``factor`` (t, h, w), then a causal convolution."""

    def __init__(self, width: int, factor: tuple[int, int, int]):
        super().__init__()
        self.factor = factor
        self.conv = CausalConv3d(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode="nearest"))


def level_strides(factors: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The (t, h, w) stride of each downsampling level after the 2x2 space-to-depth: temporal halvings first."""
    ft, fs = factors
    t_levels, s_levels = ft.bit_length() - 1, fs.bit_length() - 2
    return [(2 if i < t_levels else 1, *(2 if i < s_levels else 1,) * 2) for i in range(max(t_levels, s_levels))]


class LatentStage(nn.Module):
    """A causal convolutional video autoencoder: ``encode`` (B, T, 3, H, W) in [-1, 1] -> (B, T', C, H', W')
    scaled latents, ``decode`` back. The input stage of FlexTok's ``input_stage: latent`` (frozen there)."""

    def __init__(self, *, channels: int = 8, factors: tuple[int, int] = (2, 4), width: int = 64):
        super().__init__()
        self.channels, self.factors, self.width = channels, tuple(factors), width
        strides = level_strides(self.factors)
        encoder: list[nn.Module] = [CausalConv3d(12, width)]  # 3 colours x the 2x2 space-to-depth
        for stride in strides:
            encoder += [CausalConv3d(width, width, stride), ResidualPair(width)]
        encoder += [ResidualPair(width), FrameNorm(width), nn.SiLU(), CausalConv3d(width, channels)]
        decoder: list[nn.Module] = [CausalConv3d(channels, width), ResidualPair(width)]
        for stride in reversed(strides):
            decoder += [ResidualPair(width), Upsample(width, stride)]
        decoder += [ResidualPair(width), FrameNorm(width), nn.SiLU(), CausalConv3d(width, 12)]
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)
        self.register_buffer("scale", torch.ones(()))  # latents = raw encoder output * scale (set_scale)

    @classmethod
    def from_config(cls, config: Any) -> "LatentStage":
        """The stage a FlexTokConfig's ``stage_channels``, ``stage_factors`` and ``stage_width`` describe."""
        return cls(channels=config.stage_channels, factors=config.stage_factors, width=config.stage_width)

    @property
    def shape_fields(self) -> dict[str, Any]:
        return {"channels": self.channels, "factors": list(self.factors), "width": self.width}

    def encode_raw(self, video: Tensor) -> Tensor:
        """Unscaled latents (B, C, T', H', W') of a video (B, T, 3, H, W)."""
        x = rearrange(video, "b t c (h s1) (w s2) -> b (c s1 s2) t h w", s1=2, s2=2)  # (B, 12, T, H/2, W/2)
        return self.encoder(x.to(self.scale.dtype))

    def encode(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) in [-1, 1] -> latents (B, T', C, H', W') of about unit variance."""
        return rearrange(self.encode_raw(video) * self.scale, "b c t h w -> b t c h w")

    def decode(self, latent: Tensor) -> Tensor:
        """Latents (B, T', C, H', W') -> video (B, T, 3, H, W), the inverse of ``encode``."""
        x = self.decoder(rearrange(latent, "b t c h w -> b c t h w").to(self.scale.dtype) / self.scale)
        return rearrange(x, "b (c s1 s2) t h w -> b t c (h s1) (w s2)", s1=2, s2=2)  # (B, T, 3, H, W)

    def loss(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Training: the reconstruction's mean squared error and the reconstruction itself."""
        recon = self.decode(self.encode(video))
        return (recon.float() - video.float()).pow(2).mean(), recon

    @torch.no_grad()
    def set_scale(self, videos: list[Tensor]) -> float:
        """Set ``scale`` to 1 / the standard deviation of the raw latents of ``videos``; returns it."""
        raw = torch.cat([self.encode_raw(video).float().flatten() for video in videos])
        self.scale.fill_(1.0 / raw.std().clamp_min(1e-6).item())
        return self.scale.item()

    # ---- files -------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, training: dict[str, Any] | None = None) -> None:
        """Write ``stage.safetensors`` and ``stage.json`` (the shape fields, and ``training``), both or neither."""
        folder = Path(folder)
        state = {name: value.detach().float().contiguous().cpu() for name, value in self.state_dict().items()}
        record = {**self.shape_fields, "training": training or {}}
        with interrupts_held(), atomic_path(folder / WEIGHTS_NAME) as weights, \
                atomic_path(folder / SHAPE_NAME) as shape_file:
            save_file(state, str(weights), metadata={"format": "pt"})
            shape_file.write_text(json.dumps(record, indent=2) + "\n")

    def load(self, folder: str | os.PathLike) -> None:
        """Load the weights a ``save`` wrote into ``folder``; one line if its shape fields differ from this stage's."""
        folder = Path(folder)
        saved = read_shape_fields(folder)
        differ = [f"{name} {saved[name]} there, {self.shape_fields[name]} here" for name in SHAPE_FIELDS
                  if saved[name] != self.shape_fields[name]]
        if differ:
            raise ElasticTokError(f"{folder}: a latent stage of another shape ({'; '.join(differ)})")
        weights = check_input_file(folder / WEIGHTS_NAME, "a safetensors file")
        check_stored_shapes(weights, {name: tuple(value.shape) for name, value in self.state_dict().items()})
        try:
            state = load_file(str(weights))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise ElasticTokError(f"{weights}: not a readable safetensors file ({exc})") from None
        self.load_state_dict(state)


def read_shape_fields(folder: Path) -> dict[str, Any]:
    """The shape fields in ``folder/stage.json``; one line if it is missing or not what ``save`` writes."""
    path = folder / SHAPE_NAME
    try:
        data = json.loads(read_small_file(path, "a latent stage's shape file").decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError too
        raise ElasticTokError(f"{path}: not a readable latent stage shape file ({exc})") from None
    if not isinstance(data, dict) or any(name not in data for name in SHAPE_FIELDS):
        raise ElasticTokError(f"{path}: a latent stage's shape file holds {', '.join(SHAPE_FIELDS)}")
    return data
