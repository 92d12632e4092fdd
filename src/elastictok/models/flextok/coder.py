"""FlexTok's block coder (coarse-to-fine registers decoded by a rectified flow).

Per block, the encoder runs once for all streams: a register prefix never depends on the
registers after it, so one pass gives the tokens of every count. Each candidate count is decoded
exactly as ``decode`` will decode it, with the coder's ``Sampler`` (its Euler steps, guidance and
seeded noise), all pending candidates of all streams in one batched pass per step: a block's score is
the score of the frames the user gets back. (A search therefore costs ``steps`` decoder passes per
candidate.) The chosen candidate's one-step estimate (``FlexTok.sample_block``) then extends the decoder's
cached context. The noise is seeded per block from the sampler's seed and shared by every stream, so
decoding is deterministic and independent of how streams are batched.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from ...layers.transformer import KVCache
from ...utils.runtime import module_device
from ...utils.seeds import stable_seed
from ..coder import BlockCoder, Sampler, Trial, cache_rows, padded_latents, trim_cache


def block_noise(model, block: int, batch: int, device: torch.device, seed: int) -> Tensor:
    """The starting noise (batch, 1, P, patch_dim) of block ``block``, the same for every stream."""
    generator = torch.Generator().manual_seed(stable_seed(seed, "flextok-noise", block) % 2**63)
    noise = torch.randn((1, 1, model.p, model.patch_dim), generator=generator)
    return noise.to(device).expand(batch, -1, -1, -1)


def sample_block(model, registers: Tensor, block: int, cache: KVCache | None, sampler: Sampler
                 ) -> tuple[Tensor, Tensor]:
    """Sample block ``block`` (B, 1, P, patch_dim) from its registers (B, 1, R, D) after the context in ``cache``;
    also returns what the next block reads as its context (``FlexTok.sample_block``)."""
    noise = block_noise(model, block, registers.shape[0], registers.device, sampler.seed)
    return model.sample_block(registers, block, cache, sampler.steps, sampler.guidance, None, noise=noise)


def extend_context(model, x: Tensor, registers: Tensor, block: int, cache: KVCache | None) -> KVCache:
    """The decoder cache extended by block ``block``'s context ``x`` (B, 1, P, patch_dim) as clean (t = 0)."""
    device = x.device
    index, clean = torch.tensor([block], device=device), torch.ones(1, dtype=torch.bool, device=device)
    _, present = model.decode_segments(x, registers, x.new_zeros(x.shape[0], 1), index, clean, cache)
    return present


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
        """Decode stream ``rows[i]``'s block from its first ``counts[i]`` tokens, as ``decode`` will."""
        model = self.model
        z = self._codes(patches)[rows]  # (n, R, C)
        registers = model.register_tokens(z, counts.to(z.device)[:, None])  # (n, 1, R, D)
        x, context = sample_block(model, registers, self.blocks_done, cache_rows(self.dec_cache, rows), self.sampler)
        self.passes += self.sampler.steps
        self.evaluations += len(rows)
        recon = model.unpatchify(x.flatten(1, 2)).float()
        return Trial(z, model.quantizer.codes_to_indices(z), recon, [], [], counts=counts.cpu(), context=context)

    def next_context(self, trial: Trial) -> tuple[KVCache, KVCache]:
        """Each stream's chosen block's context (its one-step estimate), cached."""
        registers = self.model.register_tokens(trial.z, trial.counts.to(trial.z.device)[:, None])
        return self.encoded[1], extend_context(self.model, trial.context, registers, self.blocks_done, self.dec_cache)

    @classmethod
    @torch.no_grad()
    def decode(cls, model, block_tokens: Sequence[Sequence[Tensor]], window: int | None,
               sampler: Sampler | None = None) -> Iterator[Tensor]:
        sampler = sampler if sampler is not None else model.sampler()
        device, n_blocks = module_device(model), len(block_tokens[0])
        cache = None
        for k in range(n_blocks):
            z = padded_latents(model, block_tokens, k, model.r, device)
            counts = torch.tensor([len(stream[k]) for stream in block_tokens], device=device)
            registers = model.register_tokens(z, counts[:, None])
            x, context = sample_block(model, registers, k, cache, sampler)
            if k + 1 < n_blocks:
                cache = trim_cache(extend_context(model, context, registers, k, cache), window, model.u)
            yield model.unpatchify(x.flatten(1, 2)).float()
