"""ElasticTok's block coder: a block's first n patch tokens, encoded and decoded against cached context.

Each candidate count is tried by decoding the block's kept tokens against the cached keys and
values of the earlier blocks *as they were actually encoded*, so no earlier block is ever
recomputed; the cache keeps at most ``window`` blocks, so memory is flat however long the video.
The block is encoded once per candidate, or once for all of them (and for the length head's
features) when the encoder does not read the kept mask (``config.encoder_mask_conditioning``).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from ...layers.transformer import KVCache
from ...utils.runtime import module_device
from ..coder import BlockCoder, Sampler, Trial, cache_rows, padded_latents, trim_cache


class ElasticTokCoder(BlockCoder):
    """Codes ElasticTok blocks for a batch of B streams; ``encoded`` is the all-kept encoder output
    (features and cache) of a mask-free encoder, and ``latents`` its latents."""

    def __init__(self, model, batch: int, window: int | None, sampler: Sampler | None = None):
        super().__init__(model, batch, window, sampler)
        self.latents = None
        self.shared: dict | None = None  # block index -> its all-kept encoding, shared with coders of the same input

    @property
    def block_size(self) -> int:
        return self.model.config.tokens_per_block

    def trial(self, patches: Tensor, counts: Tensor, rows: Tensor) -> Trial:
        m = self.model.config.tokens_per_block
        mask = torch.arange(m, device=counts.device) < counts[:, None]
        latents, enc_kv = self._encode(patches, mask, rows)
        recon, dec_kv = self.model.decode_latents(latents.z, cache_rows(self.dec_cache, rows), self.start)
        self.passes += 1
        self.evaluations += len(rows)
        return Trial(latents.z, latents.indices, self.model.unpatchify(recon.float()), enc_kv, dec_kv)

    def _encode(self, patches: Tensor, mask: Tensor, rows: Tensor) -> tuple[object, KVCache]:
        """The block's latents for ``rows`` with ``mask`` (R, M) kept, and their encoder cache.

        An encoder that never sees the mask runs once per block, every token kept, for all streams;
        each candidate count then only zeroes the tail of its tokens (the paper's Table 5).
        """
        if self.model.encoder_reads_keep:
            self.encoder_passes += 1
            return self.model.encode_patches(patches[rows], mask, cache_rows(self.enc_cache, rows), self.start)
        h, enc_kv = self._all_kept(patches)
        if self.latents is None:
            every = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
            self.latents = self.model.latents_from_features(h, every)
        return self.model.drop_tokens(self.latents.rows(rows), mask), cache_rows(enc_kv, rows)

    def _all_kept(self, patches: Tensor) -> tuple[Tensor, KVCache]:
        """This block's encoder output with every token kept, for all streams, and its encoder cache:
        one pass per block, shared by every candidate count of a mask-free encoder and by ``features``."""
        if self.encoded is None:
            self.encoded = None if self.shared is None else self.shared.get(self.blocks_done)
            if self.encoded is None:
                every = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
                self.encoded = self.model.encoder_features(patches, every, self.enc_cache, self.start)
                if self.shared is not None:  # only the current block's is kept
                    self.shared.clear()
                    self.shared[self.blocks_done] = self.encoded
            self.encoder_passes += 1  # counted by every coder it serves, as if each had run it
        return self.encoded

    def share_encodings(self, shared: dict) -> None:
        """A mask-free encoder's output depends on the input alone (its cache holds every token of every earlier
        block), so coders of the same input share it; an encoder that reads the kept mask does not take part."""
        if not self.model.encoder_reads_keep:
            self.shared = shared

    def features(self, patches: Tensor) -> Tensor:
        """(B, 2*width): mean and standard deviation over tokens of the all-kept encoder output."""
        h = self._all_kept(patches)[0].float()
        return torch.cat([h.mean(1), h.std(1)], dim=-1)

    def next_context(self, trial: Trial) -> tuple[KVCache, KVCache]:
        self.latents = None
        return trial.enc_kv, trial.dec_kv

    @classmethod
    @torch.no_grad()
    def decode(cls, model, block_tokens: Sequence[Sequence[Tensor]], window: int | None,
               sampler: Sampler | None = None) -> Iterator[Tensor]:
        """One deterministic pass per block: ElasticTok has no sampler (``sampler`` is always None)."""
        m, device = model.config.tokens_per_block, module_device(model)
        cache = None
        for k in range(len(block_tokens[0])):
            z = padded_latents(model, block_tokens, k, m, device)
            patches, cache = model.decode_latents(z, cache, start=k * m)
            cache = trim_cache(cache, window, m)
            yield model.unpatchify(patches.float())
