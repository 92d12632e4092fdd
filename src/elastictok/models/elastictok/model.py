"""The ElasticTok autoencoder: block-causal transformer encoder and decoder around a bottleneck.

A video (B, T, 3, H, W) in [-1, 1] is cut into blocks of ``frames_per_block`` frames; each block
becomes ``tokens_per_block`` (Mmax) latent tokens, one per (Tp, Hp, Wp) patch, in (t, h, w) raster
order. ``keep`` (B, n_blocks) says how many tokens of each block survive: ``keep=n`` keeps exactly
the first n tokens of the block and zeroes the rest. Attention is full inside a block and causal
across blocks, so block k never depends on blocks after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from ...errors import ElasticTokError
from ...layers.bottlenecks import FSQ, GaussianBottleneck, GaussianPosterior
from ...layers.transformer import KVCache, Transformer, TransformerBlock
from ...utils.blocks import image_as_block
from ..base import ModelFamily, check_counts
from .coder import ElasticTokCoder
from .config import ElasticTokConfig


@dataclass
class Latents:
    """What ``encode`` returns. Dropped tokens are exact zeros in ``z``."""

    z: Tensor  # (B, N, C) bottleneck output fed to the decoder
    keep: Tensor  # (B, n_blocks) kept tokens per block
    indices: Tensor | None = None  # FSQ: (B, N) code indices; dropped tokens hold the all-zero code's index
    mean: Tensor | None = None  # VAE: (B, N, C) posterior mean
    logvar: Tensor | None = None  # VAE: (B, N, C) posterior log-variance

    def rows(self, index: Tensor) -> "Latents":
        """The latents of the batch rows ``index``."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        keep = self.keep[index] if self.keep.numel() else self.keep  # encode_patches leaves keep empty
        return Latents(z=self.z[index], keep=keep, indices=pick(self.indices), mean=pick(self.mean),
                       logvar=pick(self.logvar))


@dataclass
class ElasticTokOutput:
    recon: Tensor | None  # same shape as the input (None from a sequence-parallel shard)
    loss: Tensor  # mse + kl_weight * kl
    mse: Tensor
    kl: Tensor
    latents: Latents


def tokens_to_frames(x: Tensor, config: ElasticTokConfig) -> Tensor:
    """(B, N, Tp*Hp*Wp*C) per-token features of whole frames -> (B*T, C, H, W) feature maps.

    The maps are channels-last in memory: the layout the per-token features already have, and the
    one CPU convolutions run fastest on (about 25% less time than a strided NCHW view).
    """
    tp, hp, wp = config.patch_size
    gh, gw = config.patch_grid
    if x.shape[1] % (gh * gw):
        raise ElasticTokError(f"the conv stem and head need whole frames: {x.shape[1]} tokens is not a "
                              f"multiple of {gh * gw}")
    return rearrange(x, "b (t h w) (tp hp wp c) -> (b t tp) (h hp) (w wp) c",
                     h=gh, w=gw, tp=tp, hp=hp, wp=wp).permute(0, 3, 1, 2)


def frames_to_tokens(x: Tensor, config: ElasticTokConfig, batch: int) -> Tensor:
    """(B*T, C, H, W) feature maps -> (B, N, Tp*Hp*Wp*C): ``tokens_to_frames`` undone."""
    tp, hp, wp = config.patch_size
    return rearrange(x, "(b t tp) c (h hp) (w wp) -> b (t h w) (tp hp wp c)", b=batch, tp=tp, hp=hp, wp=wp)


class ConvStem(nn.Module):
    """Encoder input stage: patches -> two 3x3 convolutions per frame -> one linear map per token.

    The output head's mirror: a token's features also see the pixels across its patch's border, an
    overlapping patch embedding. Per frame, so block causality is untouched.
    """

    def __init__(self, config: ElasticTokConfig):
        super().__init__()
        tp, hp, wp = config.patch_size
        self.config, channels = config, config.stem_channels
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.proj = nn.Linear(tp * hp * wp * channels, config.width, bias=False)

    def forward(self, patches: Tensor) -> Tensor:
        """(B, N, Tp*Hp*Wp*3) pixel patches -> (B, N, width)."""
        x = tokens_to_frames(patches, self.config)
        x = nn.functional.gelu(self.conv2(nn.functional.gelu(self.conv1(x))))
        return self.proj(frames_to_tokens(x, self.config, patches.shape[0]))


class ConvHead(nn.Module):
    """Decoder output stage: token features -> per-pixel features -> two 3x3 convolutions per frame.

    A linear head gives each patch its own pixels, so neighbouring patches never agree at their
    border (the visible grid). Here each token emits ``channels`` features per pixel of its patch
    and the convolutions mix them across patch borders. Works on any run of whole frames' tokens.
    """

    def __init__(self, config: ElasticTokConfig):
        super().__init__()
        tp, hp, wp = config.patch_size
        self.config, self.channels = config, config.head_channels
        self.proj = nn.Linear(config.width, tp * hp * wp * self.channels, bias=False)
        self.conv1 = nn.Conv2d(self.channels, self.channels, 3, padding=1)
        self.conv2 = nn.Conv2d(self.channels, 3, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        """(B, N, width) -> (B, N, Tp*Hp*Wp*3) patches, before the output nonlinearity."""
        x = tokens_to_frames(self.proj(h), self.config)
        x = self.conv2(nn.functional.gelu(self.conv1(nn.functional.gelu(x))))
        return frames_to_tokens(x, self.config, h.shape[0])


class ElasticTok(ModelFamily, nn.Module):
    """The ElasticTok autoencoder; implements ``elastictok.models.base.ModelFamily``."""

    family: ClassVar[str] = "elastictok"
    display_name: ClassVar[str] = "ElasticTok"
    config_class: ClassVar[type] = ElasticTokConfig
    coder_class: ClassVar[type] = ElasticTokCoder
    fsdp_units: ClassVar[tuple[type[nn.Module], ...]] = (TransformerBlock,)
    supports_sequence_parallel: ClassVar[bool] = True
    trains_several_lengths: ClassVar[bool] = True

    def __init__(self, config: ElasticTokConfig):
        super().__init__()
        self.config = config
        c = config
        transformer = dict(width=c.width, num_heads=c.num_heads, mlp_width=c.mlp_width, eps=c.norm_eps,
                           block_size=c.tokens_per_block, rope_theta=c.rope_theta,
                           ffn_grid=c.patch_grid if c.ffn_conv else None)
        # encoder
        self.in_proj = nn.Linear(c.patch_dim, c.width, bias=False) if c.input_stem == "linear" else ConvStem(c)
        if c.encoder_mask_conditioning:
            self.is_kept_embed = nn.Parameter(torch.zeros(c.width))
            self.is_masked_embed = nn.Parameter(torch.zeros(c.width))
        self.encoder = Transformer(depth=c.encoder_depth, **transformer)
        self.pre_quant = nn.Linear(c.width, c.pre_quant_dim, bias=False)
        self.quantizer = FSQ(c.fsq_levels) if c.bottleneck == "fsq" else GaussianBottleneck()
        # decoder: no bias in post_quant, so a dropped token enters as an exact zero vector
        self.post_quant = nn.Linear(c.latent_dim, c.width, bias=False)
        self.decoder = Transformer(depth=c.decoder_depth, **transformer)
        self.out_proj = nn.Linear(c.width, c.patch_dim, bias=False) if c.output_head == "linear" else ConvHead(c)
        self.sequence_group = None  # a process group: forward() runs sequence-parallel over it
        self.apply(self._init_weights)
        if c.encoder_mask_conditioning:
            nn.init.normal_(self.is_kept_embed, std=c.init_std)
            nn.init.normal_(self.is_masked_embed, std=c.init_std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.init_std)

    # ---- shapes ---------------------------------------------------------------------------
    def patchify(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, N, Tp*Hp*Wp*3), tokens in (t, h, w) order, features in (tp, hp, wp, c)."""
        tp, hp, wp = self.config.patch_size
        return rearrange(video, "b (t tp) c (h hp) (w wp) -> b (t h w) (tp hp wp c)", tp=tp, hp=hp, wp=wp)

    def unpatchify(self, patches: Tensor) -> Tensor:
        tp, hp, wp = self.config.patch_size
        gh, gw = self.config.patch_grid
        return rearrange(patches, "b (t h w) (tp hp wp c) -> b (t tp) c (h hp) (w wp)",
                         h=gh, w=gw, tp=tp, hp=hp, wp=wp, c=3)

    def keep_mask(self, keep: Tensor) -> Tensor:
        """(B, n_blocks) counts -> (B, N) bool: True for the first keep[b, k] tokens of each block."""
        positions = torch.arange(self.config.tokens_per_block, device=keep.device)
        return (positions < keep[..., None]).flatten(1)

    # ---- token-level core (used by the search and the parity tests) ------------------------
    def encode_patches(self, patches: Tensor, keep_mask: Tensor, past: KVCache | None = None,
                       start: int | None = None, sequence_group=None) -> tuple[Latents, KVCache]:
        """Encode whole blocks of patches (B, N, D) that follow the cached blocks in ``past``.

        ``keep_mask`` (B, N) is any boolean mask; ``Latents.keep`` is left empty here. ``start``
        is the first token's position (default: right after the cache); with ``sequence_group`` the
        patches are this rank's shard of a sequence split over the group (ring attention).
        """
        h, present = self.encoder_features(patches, keep_mask, past, start, sequence_group)
        return self.latents_from_features(h, keep_mask), present

    def latents_from_features(self, h: Tensor, keep_mask: Tensor) -> Latents:
        """The bottleneck's latents for encoder features ``h`` (B, N, width), tokens outside ``keep_mask`` zeroed."""
        z_pre = self.pre_quant(h)
        latents = Latents(z=torch.empty(0), keep=torch.empty(0))
        if isinstance(self.quantizer, FSQ):
            latents.z = self.quantizer(z_pre)
        else:
            latents.z, posterior = self.quantizer(z_pre)
            latents.mean, latents.logvar = posterior.mean, posterior.logvar
        return self.drop_tokens(latents, keep_mask)

    def drop_tokens(self, latents: Latents, keep_mask: Tensor) -> Latents:
        """``latents`` with the tokens outside ``keep_mask`` (B, N) zeroed, FSQ indices to match."""
        z = latents.z * keep_mask[..., None]
        indices = self.quantizer.codes_to_indices(z) if isinstance(self.quantizer, FSQ) else None
        return Latents(z=z, keep=latents.keep, indices=indices, mean=latents.mean, logvar=latents.logvar)

    @property
    def encoder_reads_keep(self) -> bool:
        """Whether the encoder sees the kept mask; when not, one encoder pass serves every kept count."""
        return self.config.encoder_mask_conditioning

    def encoder_features(self, patches: Tensor, keep_mask: Tensor, past: KVCache | None = None,
                         start: int | None = None, sequence_group=None) -> tuple[Tensor, KVCache]:
        """The encoder's normalised output (B, N, width), before the bottleneck projection."""
        h = self.in_proj(patches)
        if self.config.encoder_mask_conditioning:
            h = h + torch.where(keep_mask[..., None], self.is_kept_embed, self.is_masked_embed)
        return self.encoder(h, past, start, sequence_group)

    def decode_latents(self, z: Tensor, past: KVCache | None = None, start: int | None = None,
                       sequence_group=None) -> tuple[Tensor, KVCache]:
        """Decode latents (B, N, C) of whole blocks after the cached ones; returns patches in [-1, 1]."""
        h = self.post_quant(z.to(self.post_quant.weight.dtype))
        h, present = self.decoder(h, past, start, sequence_group)
        return torch.tanh(self.out_proj(h)), present

    # ---- public API ---------------------------------------------------------------------------
    def encode(self, video: Tensor, keep: Tensor | int | None = None) -> Latents:
        """Encode a video (B, T, 3, H, W) or image (B, 3, H, W) in [-1, 1]; ``keep`` defaults to Mmax."""
        video, _ = self.as_video(video)
        keep = self._check_keep(keep, video.shape[0], video.shape[1] // self.config.frames_per_block, video.device)
        latents, _ = self.encode_patches(self.patchify(video), self.keep_mask(keep))
        latents.keep = keep
        return latents

    def decode(self, latents: Latents | Tensor, keep: Tensor | int | None = None, image: bool = False) -> Tensor:
        """Decode latents (or a raw (B, N, C) tensor) to a video; tokens beyond ``keep`` are ignored.

        With ``image=True`` the single decoded block is averaged over its frames into (B, 3, H, W).
        """
        z = latents.z if isinstance(latents, Latents) else latents
        if keep is None and isinstance(latents, Latents):
            keep = latents.keep
        m, c = self.config.tokens_per_block, self.config.latent_dim
        if z.dim() != 3 or z.shape[1] % m or z.shape[2] != c:
            raise ElasticTokError(f"latents must be (B, n_blocks*{m}, {c}), got {tuple(z.shape)}")
        keep = self._check_keep(keep, z.shape[0], z.shape[1] // m, z.device)
        patches, _ = self.decode_latents(z * self.keep_mask(keep)[..., None])
        video = self.unpatchify(patches)
        return video.mean(1) if image else video

    def forward(self, video: Tensor, keep: Tensor | int | None = None) -> ElasticTokOutput:
        """Encode and decode; the loss is MSE over every pixel (dropped regions included) plus KL for the VAE.

        ``keep`` may also be (L, B, n_blocks): every sample is decoded at L kept lengths and the loss
        averages them (more prefixes learned per step). Without encoder mask conditioning the
        encoder runs once for all L; ``recon`` and ``latents`` are those of the first length.
        When ``self.sequence_group`` is set (sequence-parallel training), this is
        ``forward_sequence_shard`` over that process group.
        """
        if isinstance(keep, Tensor) and keep.dim() == 3:
            return self._forward_lengths(video, keep)
        if self.sequence_group is not None:
            return self.forward_sequence_shard(video, keep, self.sequence_group)
        video, is_image = self.as_video(video)
        latents = self.encode(video, keep)
        patches, _ = self.decode_latents(latents.z)
        recon = self.unpatchify(patches).float()
        mse = (recon - video.float()).pow(2).mean()
        if latents.mean is not None:
            posterior = GaussianPosterior(latents.mean, latents.logvar)
            kl = posterior.kl(self.keep_mask(latents.keep), self.config.tokens_per_block)
        else:
            kl = torch.zeros((), device=video.device)
        loss = mse + self.config.kl_weight * kl
        return ElasticTokOutput(recon=recon.mean(1) if is_image else recon, loss=loss, mse=mse, kl=kl, latents=latents)

    def _forward_lengths(self, video: Tensor, keeps: Tensor) -> ElasticTokOutput:
        """``forward`` at L kept lengths (L, B, n_blocks) per sample, as one batch of L * B."""
        lengths = keeps.shape[0]
        video, is_image = self.as_video(video)
        if self.config.encoder_mask_conditioning or self.sequence_group is not None:
            out = self.forward(video.repeat(lengths, 1, 1, 1, 1), keeps.flatten(0, 1))
            if out.recon is not None:
                first = out.recon[:video.shape[0]]
                out.recon = first.mean(1) if is_image else first
            return out
        full = self.encode(video)
        keeps = torch.stack([self._check_keep(k, *full.keep.shape, video.device) for k in keeps])
        masks = self.keep_mask(keeps.flatten(0, 1))[..., None]  # (L * B, N, 1)
        patches, _ = self.decode_latents(full.z.repeat(lengths, 1, 1) * masks)
        recon = self.unpatchify(patches).float()
        mse = (recon - video.float().repeat(lengths, 1, 1, 1, 1)).pow(2).mean()
        kl = torch.zeros((), device=video.device)
        if full.mean is not None:
            posterior = GaussianPosterior(full.mean.repeat(lengths, 1, 1), full.logvar.repeat(lengths, 1, 1))
            kl = posterior.kl(masks[..., 0], self.config.tokens_per_block)
        full.keep = keeps[0]
        first = recon[:video.shape[0]]
        return ElasticTokOutput(recon=first.mean(1) if is_image else first, loss=mse + self.config.kl_weight * kl,
                                mse=mse, kl=kl, latents=full)

    def check_sequence_split(self, tokens: int, size: int) -> None:
        """Refuse a sequence of ``tokens`` that does not split over ``size`` sequence-parallel ranks (in whole
        frames, where a conv stem or head convolves each frame)."""
        c = self.config
        unit = c.patch_grid[0] * c.patch_grid[1] if "conv" in (c.input_stem, c.output_head) or c.ffn_conv else 1
        if tokens % (size * unit):
            whole = f" of whole frames ({unit} tokens each, for the conv stem, head or feed-forward)" if unit > 1 else ""
            raise ElasticTokError(f"{tokens} tokens do not split over {size} sequence-parallel ranks{whole}")

    def forward_sequence_shard(self, video: Tensor, keep: Tensor | int | None = None, group=None
                               ) -> ElasticTokOutput:
        """Sequence parallelism: this rank's share of ``forward`` on a video every rank of ``group`` holds.

        The tokens are split contiguously over the ranks; attention runs as block-causal ring
        attention. Losses are this shard's, scaled so that their mean over ranks (what DDP's gradient
        averaging computes) equals the whole sequence's loss.
        """
        import torch.distributed as dist

        group = dist.group.WORLD if group is None else group
        video, _ = self.as_video(video)
        keep = self._check_keep(keep, video.shape[0], video.shape[1] // self.config.frames_per_block, video.device)
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        patches, mask = self.patchify(video), self.keep_mask(keep)
        self.check_sequence_split(patches.shape[1], size)
        length = patches.shape[1] // size
        shard = slice(rank * length, (rank + 1) * length)
        latents, _ = self.encode_patches(patches[:, shard], mask[:, shard], start=rank * length, sequence_group=group)
        recon, _ = self.decode_latents(latents.z, start=rank * length, sequence_group=group)
        latents.keep = keep
        mse = (recon.float() - patches[:, shard].float()).pow(2).mean()
        kl = torch.zeros((), device=video.device)
        if latents.mean is not None:  # summed over kept tokens, averaged over the whole batch's blocks
            shard_kl = GaussianPosterior(latents.mean, latents.logvar).kl(mask[:, shard], length)
            kl = shard_kl * self.config.tokens_per_block / length
        return ElasticTokOutput(recon=None, loss=mse + self.config.kl_weight * kl, mse=mse, kl=kl, latents=latents)

    # ---- tokens -------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        """Distinct codes per token (FSQ); 0 for the VAE's continuous latents."""
        return self.quantizer.codebook_size if isinstance(self.quantizer, FSQ) else 0

    def tokens_to_latents(self, tokens: Tensor) -> Tensor:
        """Stored tokens (FSQ indices (n,) or VAE latents (n, C)) -> latents (n, C) for ``decode_latents``."""
        return tokens.float() if tokens.is_floating_point() else self.quantizer.indices_to_codes(tokens)

    # ---- validation ---------------------------------------------------------------------------
    def as_video(self, x: Tensor) -> tuple[Tensor, bool]:
        """Check a video or image batch; images become one block of repeated frames."""
        c = self.config
        if not isinstance(x, Tensor):
            raise ElasticTokError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (4, 5):
            raise ElasticTokError(f"expected a video (B, T, 3, H, W) or an image (B, 3, H, W), "
                                  f"got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ElasticTokError(f"expected a float tensor in [-1, 1], got {x.dtype}")
        is_image = x.dim() == 4
        if is_image:
            x = image_as_block(x[:, None], c.frames_per_block, dim=1)
        b, t, ch, h, w = x.shape
        if b == 0 or t == 0:
            raise ElasticTokError(f"empty input of shape {tuple(x.shape)}")
        if ch != 3:
            raise ElasticTokError(f"expected 3 colour channels in dim 2, got {ch} (shape {tuple(x.shape)})")
        if (h, w) != c.resolution:
            raise ElasticTokError(f"frames are {h}x{w} but this model takes {c.resolution[0]}x{c.resolution[1]}; "
                                  "resize or crop first (elastictok.media does this)")
        if t % c.frames_per_block:
            raise ElasticTokError(f"{t} frames is not a multiple of frames_per_block={c.frames_per_block}; "
                                  "pad the video")
        lo, hi = torch.aminmax(x.detach())
        if not (lo >= -1.001 and hi <= 1.001):  # also false for NaN
            raise ElasticTokError(f"pixel values must lie in [-1, 1], got [{lo.item():.3g}, {hi.item():.3g}]")
        return x, is_image

    def _check_keep(self, keep: Tensor | int | None, batch: int, n_blocks: int, device: torch.device) -> Tensor:
        """Counts (B, n_blocks) in [Mmin, Mmax]; None keeps every token."""
        c = self.config
        keep = c.tokens_per_block if keep is None else keep
        return check_counts(keep, batch, n_blocks, ("[Mmin, Mmax]", c.min_tokens, c.tokens_per_block), device)
