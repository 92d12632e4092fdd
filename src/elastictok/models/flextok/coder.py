"""FlexTok's block coder (coarse-to-fine registers decoded by a rectified flow).

Per block, the encoder runs once for all streams: a register prefix never depends on the
registers after it, so one pass gives the tokens of every count. Each candidate count is scored
with the decoder's one-step estimate of the clean block, all pending candidates of all streams in
one batched pass. The chosen count is then sampled with the model's Euler steps and guidance, and
the sampled block extends the decoder's cached context, exactly as ``decode`` rebuilds it. The
noise is seeded per block and shared by every stream, so decoding is deterministic and
independent of how streams are batched.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from ...layers.transformer import KVCache
from ...utils.runtime import module_device
from ...utils.seeds import stable_seed
from ..coder import BlockCoder, Trial, cache_rows, padded_latents, trim_cache

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


class FlexTokCoder(BlockCoder):
    """Codes FlexTok blocks for a batch of B streams; ``encoded`` is the block's register codes
    (B, R, C) and encoder cache, one encoder pass per block."""

    @property
    def block_size(self) -> int:
        return self.model.u

    def _codes(self, patches: Tensor) -> Tensor:
        if self.encoded is None:
            self.encoded = self.model.encode_blocks(patches, self.enc_cache, start=self.start)
            self.encoder_passes += 1
        return self.encoded[0]

    def trial(self, patches: Tensor, counts: Tensor, rows: Tensor) -> Trial:
        """Score stream ``rows[i]`` with ``counts[i]`` tokens: the one-step estimate of the block."""
        model = self.model
        z = self._codes(patches)[rows]  # (n, R, C)
        registers = model.register_tokens(z, counts.to(z.device)[:, None])  # (n, 1, R, D)
        past = cache_rows(self.dec_cache, rows)
        noise = block_noise(model, self.blocks_done, len(rows), z.device)
        x0 = model.sample_block(registers, self.blocks_done, past, 1, model.config.guidance, None, noise=noise)
        self.passes += 1
        self.evaluations += len(rows)
        recon = model.unpatchify(x0.flatten(1, 2)).float()
        return Trial(z, model.quantizer.codes_to_indices(z), recon, [], [], counts=counts.cpu())

    def next_context(self, trial: Trial) -> tuple[KVCache, KVCache]:
        """Sample each stream's block with its chosen count and cache it as context."""
        registers = self.model.register_tokens(trial.z, trial.counts.to(trial.z.device)[:, None])
        _, dec_cache = sample_block(self.model, registers, self.blocks_done, self.dec_cache, self.window)
        return self.encoded[1], dec_cache

    @classmethod
    @torch.no_grad()
    def decode(cls, model, block_tokens: Sequence[Sequence[Tensor]], window: int | None) -> Iterator[Tensor]:
        device, n_blocks = module_device(model), len(block_tokens[0])
        cache = None
        for k in range(n_blocks):
            z = padded_latents(model, block_tokens, k, model.r, device)
            counts = torch.tensor([len(stream[k]) for stream in block_tokens], device=device)
            x, cache = sample_block(model, model.register_tokens(z, counts[:, None]), k, cache, window,
                                    extend=k + 1 < n_blocks)
            yield model.unpatchify(x.flatten(1, 2)).float()
