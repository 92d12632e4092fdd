"""FlexTok: coarse-to-fine 1-D tokens per block of frames, decoded by a rectified flow.

After FlexTok (Bachmann et al., arXiv 2502.13967) and VideoFlexTok (arXiv 2604.12887); our own code.

A video (B, T, 3, H, W) in [-1, 1] is cut into blocks of ``frames_per_block`` frames. The encoder
reads each block's P patches plus R learned registers (block-causal; register i sees patches and
registers j <= i only) and the registers' FSQ codes are the block's tokens, ordered coarse to fine.
``keep`` (B, n_blocks) keeps the first k tokens of each block; the decoder replaces the rest with a
learned mask token (k = 0 is the null condition of classifier-free guidance).

The decoder is a rectified flow over [noisy patches | registers]: x_t = (1 - t) x0 + t noise, t = 1
pure noise, velocity v = noise - x0. It sees, for block b, its own segment and a clean copy of the
blocks before it (ground truth, lightly noised, in training; when sampling, from a KV cache, each earlier
block's one-step estimate, or its sample: ``context_from``), so long videos decode block by block in flat
memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from ...errors import ElasticTokError
from ...layers.bottlenecks import FSQ
from ...layers.conditioning import TimestepEmbedder, modulate, rms_norm
from ...layers.transformer import KVCache, RMSNorm, TransformerBlock, rope_angles, sincos_grid_embedding
from ..base import ModelFamily, check_counts
from ..coder import trim_cache
from .blocks import INPUT_STAGE_CLASSES, AdaLNBlock, decoder_mask, encoder_mask
from .coder import FlexTokCoder, extend_context
from .config import FAMILY, FlexTokConfig
from .latent import LatentStage


@dataclass
class FlexLatents:
    """What ``encode`` returns: every block's R register tokens, the kept prefix of each block."""

    z: Tensor  # (B, n_blocks*R, C) FSQ codes; tokens beyond keep are zeros
    keep: Tensor  # (B, n_blocks) kept tokens per block
    indices: Tensor  # (B, n_blocks*R) code indices; dropped tokens hold the all-zero code's index


@dataclass
class FlexTokOutput:
    """What ``forward`` returns. ``recon`` goes through the input stage's decoder on first use only: training
    logs ``mse``, measured where the flow works, so a latent stage's decoder (a third of a training step's
    FLOPs for the shipped one) does not run every step just to be logged."""

    loss: Tensor  # flow matching: mean squared velocity error
    mse: Tensor  # MSE of the x0 estimate in the input stage's space (pixels, or a latent stage's unit-variance latents)
    kl: Tensor  # always zero (FSQ); kept so trainers can log one set of fields
    t: Tensor  # (B, n_blocks) flow times drawn
    latents: FlexLatents
    estimate: Tensor  # the one-pass x0 estimate at the drawn t (at t = 1 in eval mode), as patches
    decode: Callable[[Tensor], Tensor] = field(repr=False)  # patches -> frames shaped like the input

    @cached_property
    def recon(self) -> Tensor:
        """The x0 estimate decoded to frames, shaped like the input."""
        return self.decode(self.estimate)


class NestedDropout:
    """Draws ``keep`` (B, n_blocks) for training: each block keeps its first k registers.

    Modes: ``pow2`` (k uniform over 1, 2, 4, ... and R), ``uniform`` (k uniform on
    [min_tokens, R]), ``mix`` (each block flips a coin between the two).
    """

    def __init__(self, mode: str, max_tokens: int, min_tokens: int = 1):
        self.mode, self.min_tokens, self.max_tokens = mode, min_tokens, max_tokens
        powers = [2**i for i in range(max_tokens.bit_length()) if min_tokens <= 2**i <= max_tokens]
        self.powers = torch.tensor(sorted(set(powers) | {max_tokens}))

    def __call__(self, batch: int, n_blocks: int, generator: torch.Generator | None = None) -> Tensor:
        shape = (batch, n_blocks)
        uniform = torch.randint(self.min_tokens, self.max_tokens + 1, shape, generator=generator)
        pow2 = self.powers[torch.randint(len(self.powers), shape, generator=generator)]
        if self.mode == "uniform":
            return uniform
        if self.mode == "pow2":
            return pow2
        return torch.where(torch.rand(shape, generator=generator) < 0.5, pow2, uniform)


class FlexTok(ModelFamily, nn.Module):
    """Encoder, FSQ bottleneck and rectified-flow decoder; implements ``elastictok.models.base.ModelFamily``."""

    family: ClassVar[str] = FAMILY
    display_name: ClassVar[str] = "FlexTok"
    config_class: ClassVar[type] = FlexTokConfig
    coder_class: ClassVar[type] = FlexTokCoder
    fsdp_units: ClassVar[tuple[type[nn.Module], ...]] = (TransformerBlock, AdaLNBlock)
    has_sampler: ClassVar[bool] = True  # Euler steps, guidance and seed; config.json holds the defaults

    def __init__(self, config: FlexTokConfig, input_stage: nn.Module | None = None):
        super().__init__()
        self.config = c = config
        stage = input_stage if input_stage is not None else INPUT_STAGE_CLASSES[c.input_stage].from_config(c)
        self.stage = stage.requires_grad_(False)  # frozen: trained alone (training/stage.py), saved with the model
        ft, fs = self.stage.factors
        tp, hp, wp = c.patch_size
        h, w = c.resolution
        self.grid = (c.frames_per_block // ft // tp, h // fs // hp, w // fs // wp)  # patches per block (t, h, w)
        self.p, self.r = math.prod(self.grid), c.registers
        self.u = self.p + self.r  # tokens per block inside the transformers
        self.patch_dim = tp * hp * wp * self.stage.channels
        d = c.width
        fixed = sincos_grid_embedding(self.grid, d) if c.patch_position == "sincos" else torch.zeros(self.p, d)
        self.register_buffer("fixed_patch_pos", fixed, persistent=False)  # (P, D), added to both learned ones
        # encoder
        self.enc_in = nn.Linear(self.patch_dim, d, bias=False)
        self.enc_patch_pos = nn.Parameter(torch.zeros(self.p, d))
        self.register_embed = nn.Parameter(torch.zeros(self.r, d))
        self.encoder = nn.ModuleList(TransformerBlock(d, c.num_heads, c.mlp_width, c.norm_eps)
                                     for _ in range(c.encoder_depth))
        self.enc_norm = RMSNorm(d, c.norm_eps)
        self.pre_quant = nn.Linear(d, c.latent_dim, bias=False)
        self.quantizer = FSQ(c.fsq_levels)
        # decoder
        self.dec_in = nn.Linear(self.patch_dim, d, bias=False)
        self.dec_patch_pos = nn.Parameter(torch.zeros(self.p, d))
        self.post_quant = nn.Linear(c.latent_dim, d, bias=False)
        self.dec_register_pos = nn.Parameter(torch.zeros(self.r, d))
        self.mask_token = nn.Parameter(torch.zeros(d))  # every dropped register, and the null condition
        self.time_embed = TimestepEmbedder(d)
        self.decoder = nn.ModuleList(
            AdaLNBlock(width=d, num_heads=c.num_heads, mlp_width=c.mlp_width, eps=c.norm_eps, patches=self.p,
                       registers=self.r) for _ in range(c.decoder_depth))
        self.final_modulation = nn.Linear(d, 2 * d)
        self.out_proj = nn.Linear(d, self.patch_dim, bias=False)
        self.nested_dropout = NestedDropout(c.nested_dropout, self.r, c.min_tokens)
        self._init_weights()

    def _init_weights(self) -> None:
        stage = set(self.stage.modules())  # the input stage keeps its own initialisation (or trained weights)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in stage:
                nn.init.normal_(module.weight, std=self.config.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for p in (self.enc_patch_pos, self.register_embed, self.dec_patch_pos, self.dec_register_pos, self.mask_token):
            nn.init.normal_(p, std=self.config.init_std)
        for block in self.decoder:  # adaLN-zero: every residual branch starts closed
            for linear in (block.modulation.patches, block.modulation.registers):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
        for linear in (self.final_modulation, self.out_proj):
            nn.init.zeros_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    # ---- sizes the search and the trainer read --------------------------------------------------
    @property
    def tokens_per_block(self) -> int:
        return self.config.tokens_per_block

    @property
    def min_tokens(self) -> int:
        return self.config.min_tokens

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def keep_sampler(self, mask: str) -> NestedDropout | None:
        """The ``elastic`` mask is this family's nested dropout: one kept prefix per sample and block."""
        return self.nested_dropout if mask == "elastic" else None

    def tokens_to_latents(self, tokens: Tensor) -> Tensor:
        """Stored code indices (n,) -> FSQ codes (n, C)."""
        return self.quantizer.indices_to_codes(tokens)

    # ---- shapes ------------------------------------------------------------------------------------
    def patchify(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> input stage -> (B, n_blocks*P, patch_dim), patches of a block contiguous.

        The stage codes each block on its own, so a block's patches are the same whether the tokenizer
        streams it alone or ``forward`` sees the whole clip."""
        tp, hp, wp = self.config.patch_size
        blocks = rearrange(video, "b (n f) c h w -> (b n) f c h w", f=self.config.frames_per_block)
        x = self.stage.encode(blocks)  # (B*n, T', C, H', W')
        return rearrange(x, "(b n) (t tp) c (h hp) (w wp) -> b (n t h w) (tp hp wp c)", b=video.shape[0],
                         tp=tp, hp=hp, wp=wp)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, n_blocks*P, patch_dim) -> input stage's decoder, block by block -> (B, T, 3, H, W)."""
        tp, hp, wp = self.config.patch_size
        gt, gh, gw = self.grid
        x = rearrange(patches, "b (n t h w) (tp hp wp c) -> (b n) (t tp) c (h hp) (w wp)", t=gt, h=gh, w=gw,
                      tp=tp, hp=hp, wp=wp)
        return rearrange(self.stage.decode(x), "(b n) f c h w -> b (n f) c h w", b=patches.shape[0])

    # ---- encoder -----------------------------------------------------------------------------------
    def encode_blocks(self, patches: Tensor, past: KVCache | None = None, start: int | None = None
                      ) -> tuple[Tensor, KVCache]:
        """FSQ codes (B, n*R, C) of the registers of n whole blocks of patches (B, n*P, patch_dim)
        that follow the blocks cached in ``past``, and the cache extended with them. ``start`` is the
        first new token's RoPE position (default: right after the cache)."""
        b, n = patches.shape[0], patches.shape[1] // self.p
        n_past = 0 if past is None else past[0][0].shape[2] // self.u
        start = n_past * self.u if start is None else start
        h = self.enc_in(patches).view(b, n, self.p, -1) + self.enc_patch_pos + self.fixed_patch_pos  # (B, n, P, D)
        registers = self.register_embed.expand(b, n, -1, -1)  # (B, n, R, D)
        x = torch.cat((h, registers.to(h.dtype)), dim=2).flatten(1, 2)  # (B, n*U, D)
        cos, sin = rope_angles(torch.arange(start, start + n * self.u, device=x.device), self.config.head_dim,
                               self.config.rope_theta)
        mask = encoder_mask(n, n_past, self.p, self.r, x.device)
        present: KVCache = []
        for i, layer in enumerate(self.encoder):
            x, kv = layer(x, cos, sin, mask, None if past is None else past[i])
            present.append(kv)
        registers = self.enc_norm(x).view(b, n, self.u, -1)[:, :, self.p:]  # (B, n, R, D)
        z = self.pre_quant(registers)  # (B, n, R, C)
        if self.config.quant_norm:
            z = rms_norm(z, self.config.norm_eps)
        return self.quantizer(z).flatten(1, 2), present  # (B, n*R, C)

    def _latents(self, codes: Tensor, keep: Tensor) -> FlexLatents:
        z = codes * self.keep_mask(keep)[..., None]
        return FlexLatents(z=z, keep=keep, indices=self.quantizer.codes_to_indices(z))

    def keep_mask(self, keep: Tensor) -> Tensor:
        """(B, n_blocks) counts -> (B, n_blocks*R) bool: True for the first keep[b, k] tokens of each block."""
        return (torch.arange(self.r, device=keep.device) < keep[..., None]).flatten(1)

    # ---- decoder -----------------------------------------------------------------------------------
    def register_tokens(self, z: Tensor, keep: Tensor) -> Tensor:
        """Decoder inputs (B, n, R, D) for codes z (B, n*R, C): tokens past keep (B, n) become the mask token.

        ``keep`` may instead be a bool mask (B, n, R) of the tokens to use (to drop any token, not only a tail).
        """
        kept = keep if keep.dtype == torch.bool else torch.arange(self.r, device=z.device) < keep[..., None]
        b, n, _ = kept.shape
        h = self.post_quant(z.to(self.post_quant.weight.dtype)).view(b, n, self.r, -1)  # (B, n, R, D)
        return torch.where(kept[..., None], h, self.mask_token.to(h.dtype)) + self.dec_register_pos

    def decode_segments(self, x: Tensor, registers: Tensor, t: Tensor, blocks: Tensor, clean: Tensor,
                        past: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """One decoder pass over S segments [patches | registers] after the clean segments cached in ``past``.

        x (B, S, P, patch_dim) patches at flow time t (B, S); registers (B, S, R, D); blocks (S,)
        each segment's block number (its RoPE position); clean (S,) whether it is context. Returns the
        raw output (B, S, P, patch_dim), x0 or velocity by ``config.prediction``, and the cache.
        """
        b, s = t.shape
        h = self.dec_in(x.to(self.dec_in.weight.dtype)) + self.dec_patch_pos + self.fixed_patch_pos  # (B, S, P, D)
        tokens = torch.cat((h, registers.to(h.dtype)), dim=2).flatten(1, 2)  # (B, S*U, D)
        c = self.time_embed(t)  # (B, S, D)
        positions = (blocks[:, None] * self.u + torch.arange(self.u, device=x.device)).flatten()  # (S*U,)
        cos, sin = rope_angles(positions, self.config.head_dim, self.config.rope_theta)
        n_past = 0 if past is None else past[0][0].shape[2]
        mask = decoder_mask(blocks, clean, self.u, n_past)
        present: KVCache = []
        for i, layer in enumerate(self.decoder):
            tokens, kv = layer(tokens, c, cos, sin, mask, None if past is None else past[i])
            present.append(kv)
        patches = tokens.view(b, s, self.u, -1)[:, :, :self.p]  # (B, S, P, D)
        shift, scale = self.final_modulation(nn.functional.silu(c))[:, :, None].chunk(2, dim=-1)  # (B, S, 1, D)
        return self.out_proj(modulate(rms_norm(patches, self.config.norm_eps), shift, scale)), present

    def _x0_and_velocity(self, out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Both views of a decoder output at times t (broadcastable, > 0 for x0 prediction)."""
        out = out.float()
        if self.config.prediction == "x0":
            return out, (x_t - out) / t
        return x_t - t * out, out

    # ---- training ----------------------------------------------------------------------------------
    def forward(self, video: Tensor, keep: Tensor | int | None = None) -> FlexTokOutput:
        """Flow-matching loss on a video (B, T, 3, H, W) or image (B, 3, H, W) in [-1, 1].

        ``keep`` defaults to nested dropout in training and to all tokens otherwise. In training, t is
        drawn by ``training_times`` and ``cfg_dropout`` of the blocks lose all their registers; in eval
        mode t = 1, so ``recon`` is the one-step estimate. Block b's context is the ground truth of the
        earlier blocks (noised by up to ``context_noise`` in training).
        The loss is ``flow_loss``: the velocity error, plus ``x0_loss_weight`` times the x0 estimate's own error.
        """
        c = self.config
        video, is_image = self.as_video(video)
        x0 = self.patchify(video).float()
        b, n = x0.shape[0], x0.shape[1] // self.p
        if keep is None and self.training:
            keep = self.nested_dropout(b, n).to(video.device)
        keep = self._check_keep(keep, b, n, video.device)
        codes, _ = self.encode_blocks(x0)
        latents = self._latents(codes, keep)
        x0 = x0.view(b, n, self.p, -1)  # (B, n, P, patch_dim)
        noise = torch.randn_like(x0)
        if self.training:
            t = self.training_times(b, n, x0.device)
            cond_keep = keep.masked_fill(torch.rand(b, n, device=x0.device) < c.cfg_dropout, 0)
        else:
            t, cond_keep = torch.ones(b, n, device=x0.device), keep
        tt = t[..., None, None]  # (B, n, 1, 1)
        x_t = (1 - tt) * x0 + tt * noise
        x_in, regs, t_in = x_t, self.register_tokens(latents.z, cond_keep), t
        blocks, clean = torch.arange(n, device=x0.device), torch.zeros(n, dtype=torch.bool, device=x0.device)
        if n > 1:  # clean copies of blocks 0..n-2: the context that later blocks see
            s = torch.rand(b, n - 1, device=x0.device) * (c.context_noise if self.training else 0.0)
            ss = s[..., None, None]
            x_in = torch.cat(((1 - ss) * x0[:, :-1] + ss * torch.randn_like(x0[:, :-1]), x_t), dim=1)
            regs = torch.cat((self.register_tokens(latents.z[:, :(n - 1) * self.r], keep[:, :-1]), regs), dim=1)
            t_in = torch.cat((s, t), dim=1)
            blocks = torch.cat((blocks[:-1], blocks))
            clean = torch.cat((~clean[:-1], clean))
        out, _ = self.decode_segments(x_in, regs, t_in, blocks, clean)
        out = out[:, -n:]  # the noisy segments (B, n, P, patch_dim)
        loss, x0_hat = self.flow_loss(out, x_t=x_t, x0=x0, noise=noise, t=tt)

        def to_frames(patches: Tensor) -> Tensor:
            recon = self.unpatchify(patches.flatten(1, 2))
            return recon.mean(1) if is_image else recon

        return FlexTokOutput(loss=loss, mse=(x0_hat - x0).pow(2).mean(), kl=torch.zeros((), device=video.device),
                             t=t, latents=latents, estimate=x0_hat, decode=to_frames)

    def training_times(self, batch: int, n_blocks: int, device: torch.device) -> Tensor:
        """Flow times (batch, n_blocks) for training: logit-normal, t = sigmoid(N(time_mean, time_std^2)), with
        ``pure_noise_fraction`` of them set to t = 1 exactly."""
        c = self.config
        t = torch.sigmoid(torch.randn(batch, n_blocks, device=device) * c.time_std + c.time_mean)
        if c.pure_noise_fraction:
            t = t.masked_fill(torch.rand(batch, n_blocks, device=device) < c.pure_noise_fraction, 1.0)
        return t

    def flow_loss(self, out: Tensor, *, x_t: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The training loss of decoder outputs ``out`` at times t (broadcastable to x0), and the x0 estimate.

        The loss is the mean squared error of the velocity v = noise - x0 in either parametrisation: for x0
        prediction the implied velocity (x_t - x0_hat) / t misses by (x0 - x0_hat) / t, with 1/t capped at
        1/t_min (Li & He 2025). ``x0_loss_weight`` adds the x0 estimate's own MSE (in the input stage's space).
        """
        c = self.config
        out = out.float()
        if c.prediction == "x0":
            x0_hat = out
            loss = ((x0_hat - x0) / t.clamp_min(c.t_min)).pow(2).mean()
        else:
            x0_hat = x_t - t * out
            loss = (out - (noise - x0)).pow(2).mean()
        if c.x0_loss_weight:
            loss = loss + c.x0_loss_weight * (x0_hat - x0).pow(2).mean()
        return loss, x0_hat

    # ---- public API --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: Tensor, keep: Tensor | int | None = None, window: int | None | str = "model"
               ) -> FlexLatents:
        """Tokens of a video (B, T, 3, H, W) or image (B, 3, H, W) in [-1, 1], block by block with a KV
        cache of ``window`` blocks ("model": ``config.window``; None: all); ``keep`` defaults to all R."""
        video, _ = self.as_video(video)
        patches = self.patchify(video)
        b, n = patches.shape[0], patches.shape[1] // self.p
        keep = self._check_keep(keep, b, n, video.device)
        cache, codes = None, []
        for block in range(n):
            block_codes, present = self.encode_blocks(patches[:, block * self.p:(block + 1) * self.p], cache,
                                                      start=block * self.u)
            codes.append(block_codes)
            cache = self._trim(present, window)
        return self._latents(torch.cat(codes, dim=1), keep)

    @torch.no_grad()
    def decode(self, latents: FlexLatents | Tensor, keep: Tensor | int | None = None, *, steps: int | None = None,
               guidance: float | None = None, generator: torch.Generator | None = None,
               window: int | None | str = "model", image: bool = False, token_mask: Tensor | None = None) -> Tensor:
        """Sample a video from tokens: per block, ``steps`` Euler steps from t = 1 (seeded noise from
        ``generator``) to 0 with guidance ``guidance`` (1: none), then the block's one-step estimate (or its
        sample: ``config.context_from``) is cached as context for the next. ``steps=1`` is the one-step
        estimate. Tokens beyond ``keep`` are ignored; ``token_mask`` (B, n_blocks*R) bool, if given, says
        instead which tokens are used.
        """
        z = latents.z if isinstance(latents, FlexLatents) else latents
        if keep is None and isinstance(latents, FlexLatents):
            keep = latents.keep
        if z.dim() != 3 or z.shape[1] % self.r or z.shape[2] != self.config.latent_dim:
            raise ElasticTokError(f"latents must be (B, n_blocks*{self.r}, {self.config.latent_dim}), "
                                  f"got {tuple(z.shape)}")
        b, n = z.shape[0], z.shape[1] // self.r
        keep = self._check_keep(keep, b, n, z.device)
        steps = self.config.steps if steps is None else steps
        guidance = self.config.guidance if guidance is None else guidance
        if steps < 1:
            raise ElasticTokError(f"steps must be at least 1, got {steps}")
        used = self.keep_mask(keep) if token_mask is None else token_mask.to(device=z.device, dtype=torch.bool)
        if used.shape != (b, n * self.r):
            raise ElasticTokError(f"token_mask must be (B, n_blocks*R) = ({b}, {n * self.r}), got {tuple(used.shape)}")
        cache, blocks = None, []
        for block in range(n):
            part = slice(block * self.r, (block + 1) * self.r)
            regs = self.register_tokens(z[:, part], used[:, None, part])
            x, context = self.sample_block(regs, block, cache, steps, guidance, generator)  # (B, 1, P, patch_dim)
            blocks.append(x)
            if block + 1 < n:
                cache = self._trim(extend_context(self, context, regs, block, cache), window)
        video = self.unpatchify(torch.cat(blocks, dim=1).flatten(1, 2)).float()
        return video.mean(1) if image else video

    def preview(self, latents: FlexLatents | Tensor, keep: Tensor | int | None = None, *,
                guidance: float | None = None, generator: torch.Generator | None = None, image: bool = False) -> Tensor:
        """The one-step estimate of the clean frames: the decoder's x0 at t = 1, i.e. ``decode(steps=1)``."""
        return self.decode(latents, keep, steps=1, guidance=guidance, generator=generator, image=image)

    def sample_block(self, registers: Tensor, block: int, past: KVCache | None, steps: int, guidance: float,
                     generator: torch.Generator | None, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Euler-integrate one block (B, 1, P, patch_dim) from noise (drawn from ``generator`` unless
        given) to t = 0 given its registers (B, 1, R, D). Returns the sample and what the next block reads as
        context (``config.context_from``): the first step's (guided) x0, i.e. the one-step estimate, at no
        extra cost, or the sample itself."""
        b, device = registers.shape[0], registers.device
        shape = (b, 1, self.p, self.patch_dim)
        x = noise if noise is not None else \
            torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device)
        guided = guidance != 1.0
        if guided:  # one pass over [conditional | null] rows; the null rows see the same context
            null = self.register_tokens(registers.new_zeros(b, self.r, self.config.latent_dim),
                                        torch.zeros(b, 1, dtype=torch.long, device=device))
            registers = torch.cat((registers, null))
            past = None if past is None else [(torch.cat((k, k)), torch.cat((v, v))) for k, v in past]
        times = self.sampling_times(steps, device)
        index, noisy = self._index(block, device), torch.zeros(1, dtype=torch.bool, device=device)
        for i in range(steps):
            x_in = torch.cat((x, x)) if guided else x
            t = times[i].expand(x_in.shape[0], 1)  # (rows, 1)
            out, _ = self.decode_segments(x_in, registers, t, index, noisy, past)
            x0, v = self._x0_and_velocity(out, x_in, times[i])
            if guided:
                (x0_cond, x0_null), (v_cond, v_null) = x0.chunk(2), v.chunk(2)
                x0, v = x0_null + guidance * (x0_cond - x0_null), v_null + guidance * (v_cond - v_null)
            if i == 0:
                estimate = x0
            x = x + (times[i + 1] - times[i]) * v
        return x, (estimate if self.config.context_from == "estimate" else x)

    def sampling_times(self, steps: int, device: torch.device | None = None) -> Tensor:
        """The Euler grid (steps + 1,) from t = 1 to 0: uniform u, shifted to t = s u / (1 + (s - 1) u) with
        s = ``sample_shift`` (s = 1 leaves the uniform grid as it is)."""
        u = torch.linspace(1.0, 0.0, steps + 1, device=device)
        s = self.config.sample_shift
        return u if s == 1.0 else s * u / (1 + (s - 1) * u)

    def load_input_stage(self, folder: str | os.PathLike) -> None:
        """Load a latent stage trained alone (``training.stage``) into this model, whose config must ask for one
        of the same shape."""
        if not isinstance(self.stage, LatentStage):
            raise ElasticTokError(f"stage_from {folder}: this model's input_stage is {self.config.input_stage!r}; "
                                  "stage weights load into input_stage 'latent' only")
        self.stage.load(folder)

    # ---- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _index(block: int, device: torch.device) -> Tensor:
        return torch.tensor([block], device=device)

    def _trim(self, cache: KVCache, window: int | None | str) -> KVCache:
        """Keep the last ``window`` blocks of a cache (positions keep counting in the caller)."""
        return trim_cache(cache, self.config.window if window == "model" else window, self.u)

    def as_video(self, x: Tensor) -> tuple[Tensor, bool]:
        """Check a video or image batch; images become one block of repeated frames."""
        c = self.config
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() not in (4, 5):
            raise ElasticTokError("expected a float tensor video (B, T, 3, H, W) or image (B, 3, H, W) in [-1, 1], "
                                  f"got {getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        is_image = x.dim() == 4
        if is_image:
            x = x[:, None].expand(-1, c.frames_per_block, -1, -1, -1)
        b, t, ch, h, w = x.shape
        if b == 0 or t == 0 or ch != 3 or (h, w) != c.resolution or t % c.frames_per_block:
            raise ElasticTokError(f"expected (B, T, 3, {c.resolution[0]}, {c.resolution[1]}) with T a multiple of "
                                  f"{c.frames_per_block}, got {tuple(x.shape)}")
        lo, hi = torch.aminmax(x.detach())
        if not (lo >= -1.001 and hi <= 1.001):  # also false for NaN
            raise ElasticTokError(f"pixel values must lie in [-1, 1], got [{lo.item():.3g}, {hi.item():.3g}]")
        return x, is_image

    def _check_keep(self, keep: Tensor | int | None, batch: int, n_blocks: int, device: torch.device) -> Tensor:
        """Counts (B, n_blocks) in [0, R]; 0 keeps no token (the null condition), None every one."""
        return check_counts(self.r if keep is None else keep, batch, n_blocks, ("[0, R]", 0, self.r), device)
