"""The block coder for FlexTok (coarse-to-fine registers decoded by a rectified flow).

Per block, the encoder runs once for all streams: a register prefix never depends on the
registers after it, so one pass gives the tokens of every count. Each candidate count is scored
with the decoder's one-step estimate of the clean block, all pending candidates of all streams in
one batched pass. The chosen count is then sampled with the model's Euler steps and guidance, and
the sampled block extends the decoder's cached context, exactly as ``decode_flex_blocks`` rebuilds
it. The noise is seeded per block and shared by every stream, so decoding is deterministic and
independent of how streams are batched. Same interface as ``coder.BlockCoder``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..errors import ElasticTokError
from ..layers.transformer import KVCache
from ..utils.runtime import module_device
from ..utils.seeds import stable_seed
from .coder import Trial, cache_rows, trim_cache

NOISE_SEED = 0  # token files hold no seed: every FlexTok decode of block k starts from the same noise


def block_noise(model, block: int, batch: int, device: torch.device) -> Tensor:
    """The starting noise (batch, 1, P, patch_dim) of block ``block``, the same for every stream."""
    generator = torch.Generator().manual_seed(stable_seed(NOISE_SEED, "flextok-noise", block) % 2**63)
    noise = torch.randn((1, 1, model.p, model.patch_dim), generator=generator)
    return noise.to(device).expand(batch, -1, -1, -1)


def sample_block(model, registers: Tensor, block: int, cache: KVCache | None, window: int | None,
                 extend: bool = True) -> tuple[Tensor, KVCache | None]:
    """Sample block ``block`` (B, 1, P, patch_dim) from its registers (B, 1, R, D) with the model's
    steps and guidance; with ``extend``, also return the decoder cache extended by the clean block."""
    c, b, device = model.config, registers.shape[0], registers.device
    x = model.sample_block(registers, block, cache, c.steps, c.guidance, None,
                           noise=block_noise(model, block, b, device))
    if not extend:
        return x, cache
    index, clean = torch.tensor([block], device=device), torch.ones(1, dtype=torch.bool, device=device)
    _, present = model.decode_segments(x, registers, x.new_zeros(b, 1), index, clean, cache)
    return x, trim_cache(present, window, model.u)


class FlexBlockCoder:
    """Encodes blocks one at a time for a batch of B streams with a FlexTok model and cached context."""

    def __init__(self, model, batch: int, window: int | None):
        self.model, self.batch, self.window = model, batch, window
        self.enc_cache: KVCache | None = None
        self.dec_cache: KVCache | None = None
        self.blocks_done = 0
        self.passes = 0  # decoder passes (a scoring pass covers several candidate counts)
        self.encoder_passes = 0  # one per block
        self.evaluations = 0  # candidate counts scored, summed over streams
        self._codes: tuple[Tensor, KVCache] | None = None  # this block's register codes (B, R, C) and encoder cache

    def _encoded(self, patches: Tensor) -> Tensor:
        if self._codes is None:
            start = self.blocks_done * self.model.u  # RoPE positions keep counting when the cache is trimmed
            self._codes = self.model.encode_blocks(patches, self.enc_cache, start=start)
            self.encoder_passes += 1
        return self._codes[0]

    def trial(self, patches: Tensor, counts: Tensor, rows: Tensor) -> Trial:
        """Score stream ``rows[i]`` with ``counts[i]`` tokens: the one-step estimate of the block."""
        model = self.model
        z = self._encoded(patches)[rows]  # (n, R, C)
        registers = model.register_tokens(z, counts.to(z.device)[:, None])  # (n, 1, R, D)
        past = cache_rows(self.dec_cache, rows)
        noise = block_noise(model, self.blocks_done, len(rows), z.device)
        x0 = model.sample_block(registers, self.blocks_done, past, 1, model.config.guidance, None, noise=noise)
        self.passes += 1
        self.evaluations += len(rows)
        recon = model.unpatchify(x0.flatten(1, 2)).float()
        return Trial(z, model.quantizer.codes_to_indices(z), recon, [], [], counts=counts.cpu())

    def features(self, patches: Tensor) -> Tensor:
        raise ElasticTokError("the length head (search regression) is an ElasticTok option; FlexTok needs a search")

    def commit(self, trial: Trial) -> None:
        """Sample each stream's block with its chosen count (one row per stream) and cache it as context."""
        registers = self.model.register_tokens(trial.z, trial.counts.to(trial.z.device)[:, None])
        _, self.dec_cache = sample_block(self.model, registers, self.blocks_done, self.dec_cache, self.window)
        self.enc_cache = trim_cache(self._codes[1], self.window, self.model.u)
        self._codes = None
        self.blocks_done += 1


@torch.no_grad()
def decode_flex_blocks(model, block_tokens: Sequence[Sequence[Tensor]], window: int | None) -> Iterator[Tensor]:
    """Decode B streams of equal block count together; yields (B, fpb, 3, H, W) float blocks in [-1, 1]."""
    device, n_blocks = module_device(model), len(block_tokens[0])
    cache = None
    for k in range(n_blocks):
        z = torch.zeros(len(block_tokens), model.r, model.config.latent_dim, device=device)
        for b, stream in enumerate(block_tokens):
            z[b, :len(stream[k])] = model.tokens_to_latents(stream[k].to(device))
        counts = torch.tensor([len(stream[k]) for stream in block_tokens], device=device)
        x, cache = sample_block(model, model.register_tokens(z, counts[:, None]), k, cache, window,
                                extend=k + 1 < n_blocks)
        yield model.unpatchify(x.flatten(1, 2)).float()
