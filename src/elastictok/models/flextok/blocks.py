"""Building blocks of FlexTok only: adaLN-zero transformer blocks (patch/register modulation), the
swappable input stage and the two attention masks (timestep embedding and modulation are generic:
``elastictok.layers.conditioning``).

Shapes: B batch, S segments (a block's tokens in one stream), P patches and R registers per
block, U = P + R, N tokens, D width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...layers.conditioning import modulate, rms_norm
from ...layers.transformer import Attention, SwiGLU
from .latent import LatentStage


# ---- adaLN-zero ------------------------------------------------------------------------------------
class SegmentModulation(nn.Module):
    """Per-token shift/scale/gate vectors from per-segment conditioning, separate for patches and registers.

    c (B, S, D) -> (B, S*U, chunks*D): a segment's P patch tokens get ``patches(c)``, its R register
    tokens ``registers(c)``. Zero-initialised, so every gate starts at zero (adaLN-zero).
    """

    def __init__(self, width: int, chunks: int, patches: int, registers: int):
        super().__init__()
        self.p, self.r = patches, registers
        self.patches = nn.Linear(width, chunks * width)
        self.registers = nn.Linear(width, chunks * width)
        for linear in (self.patches, self.registers):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, c: Tensor) -> Tensor:
        c = F.silu(c)
        m_p = self.patches(c)[:, :, None].expand(-1, -1, self.p, -1)  # (B, S, P, chunks*D)
        m_r = self.registers(c)[:, :, None].expand(-1, -1, self.r, -1)  # (B, S, R, chunks*D)
        return torch.cat((m_p, m_r), dim=2).flatten(1, 2)  # (B, S*U, chunks*D)


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block with adaLN-zero (DiT, Peebles & Xie 2023, sec. 3.2).

    The timestep sets a shift, scale and gate for each sub-layer; the gates start at zero so the
    block starts as the identity. Attention is ``elastictok.layers.transformer.Attention`` (RoPE, SDPA, KV cache).
    """

    def __init__(self, *, width: int, num_heads: int, mlp_width: int, eps: float, patches: int, registers: int):
        super().__init__()
        self.eps = eps
        self.modulation = SegmentModulation(width, 6, patches, registers)
        self.attention = Attention(width, num_heads)
        self.feed_forward = SwiGLU(width, mlp_width)

    def forward(self, x: Tensor, c: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.modulation(c).chunk(6, dim=-1)  # each (B, N, D)
        attended, present = self.attention(modulate(rms_norm(x, self.eps), shift_a, scale_a), cos, sin, mask, past)
        x = x + gate_a * attended
        x = x + gate_f * self.feed_forward(modulate(rms_norm(x, self.eps), shift_f, scale_f))
        return x, present


# ---- input stage -----------------------------------------------------------------------------------
class PixelStage(nn.Module):
    """The identity input stage: the flow runs on pixels in [-1, 1].

    A latent stage (``latent.LatentStage``, a causal video autoencoder) implements the same members:
    ``channels`` and ``factors`` (temporal, spatial) of its grid, ``encode(video) -> (B, T', C, H', W')``,
    ``decode``, its inverse, and ``from_config``. ``config.input_stage`` names one in ``INPUT_STAGE_CLASSES``;
    or pass one as ``FlexTok(config, input_stage=...)``.
    """

    channels = 3
    factors = (1, 1)  # (temporal, spatial) downsampling

    @classmethod
    def from_config(cls, config: object) -> "PixelStage":
        return cls()

    def encode(self, video: Tensor) -> Tensor:
        return video

    def decode(self, latent: Tensor) -> Tensor:
        return latent


INPUT_STAGE_CLASSES = {"pixels": PixelStage, "latent": LatentStage}


# ---- attention masks (True: may attend) -----------------------------------------------------------
def encoder_mask(n_new: int, n_past: int, patches: int, registers: int, device: torch.device) -> Tensor:
    """(Nq, Nk) mask of the encoder over blocks laid out [patches | registers].

    Queries are the ``n_new`` blocks after ``n_past`` cached ones. Every token sees only blocks up to
    its own. A patch sees patches. Register i sees patches and registers j <= i (of its block and of
    earlier blocks), so registers 0..k-1 of every block never depend on any register k.. .
    """
    u, n = patches + registers, n_past + n_new
    block = torch.arange(n, device=device).repeat_interleave(u)  # (Nk,)
    index = (torch.arange(u, device=device) - patches).repeat(n)  # register index; negative for patches
    is_register = index >= 0
    q = slice(n_past * u, None)
    same_or_earlier = block[None, :] <= block[q, None]
    patch_sees = ~is_register[None, :]
    register_sees = patch_sees | (index[None, :] <= index[q, None])
    return same_or_earlier & torch.where(is_register[q, None], register_sees, patch_sees)


def decoder_mask(segment_block: Tensor, segment_clean: Tensor, tokens: int, n_past_tokens: int = 0) -> Tensor | None:
    """(Nq, Nk) mask of the decoder over S segments of ``tokens`` each, after ``n_past_tokens`` cached ones.

    A segment is one block's [patches | registers], clean (context for later blocks) or noisy (being
    denoised). A token sees its own segment fully and the clean segments of earlier blocks; cached
    tokens are always clean segments of earlier blocks. None when nothing needs masking.
    """
    if segment_block.numel() == 1:
        return None
    block = segment_block.repeat_interleave(tokens)  # (N,)
    clean = segment_clean.repeat_interleave(tokens)
    segment = torch.arange(segment_block.numel(), device=block.device).repeat_interleave(tokens)
    mask = (segment[None, :] == segment[:, None]) | (clean[None, :] & (block[None, :] < block[:, None]))
    if n_past_tokens:
        mask = torch.cat((mask.new_ones(mask.shape[0], n_past_tokens), mask), dim=1)
    return mask
