"""The block-by-block coder: encode and decode one block at a time against cached context.

Each candidate count is tried by decoding the block's kept tokens against the cached keys and
values of the earlier blocks *as they were actually encoded*, so no earlier block is ever
recomputed; the cache keeps at most ``window`` blocks, so memory is flat however long the video.
The block is encoded once per candidate, or once for all of them (and for the length head's
features) when the model's encoder does not read the kept mask (``model.encoder_reads_keep``).
Works with any model family that provides the token-level core of ``elastictok.models.base``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..layers.transformer import KVCache
from ..utils.runtime import module_device


@dataclass
class Trial:
    """The outcome of encoding and decoding one block with given counts, for a batch of rows."""

    z: Tensor  # (R, M, C)
    indices: Tensor | None  # (R, M)
    recon: Tensor  # (R, fpb, 3, H, W)
    enc_kv: KVCache
    dec_kv: KVCache
    counts: Tensor | None = None  # (R,) the counts tried, for coders that commit from them (FlexTok)

    def rows(self, index: Tensor) -> "Trial":
        return Trial(self.z[index], None if self.indices is None else self.indices[index], self.recon[index],
                     cache_rows(self.enc_kv, index), cache_rows(self.dec_kv, index),
                     None if self.counts is None else self.counts[index])

    def kept_tokens(self, row: int, n: int) -> Tensor:
        """Row ``row``'s first ``n`` tokens as stored: code indices, or float latents."""
        return self.indices[row, :n] if self.indices is not None else self.z[row, :n].float()


def stack_trials(trials: list[Trial]) -> Trial:
    """One trial holding the rows of several, in order."""
    if len(trials) == 1:
        return trials[0]
    def cat_kv(caches: list[KVCache]) -> KVCache:
        return [(torch.cat([kv[layer][0] for kv in caches]), torch.cat([kv[layer][1] for kv in caches]))
                for layer in range(len(caches[0]))]

    return Trial(torch.cat([t.z for t in trials]),
                 None if trials[0].indices is None else torch.cat([t.indices for t in trials]),
                 torch.cat([t.recon for t in trials]),
                 cat_kv([t.enc_kv for t in trials]), cat_kv([t.dec_kv for t in trials]),
                 None if trials[0].counts is None else torch.cat([t.counts for t in trials]))


def cache_rows(cache: KVCache | None, rows: Tensor) -> KVCache | None:
    """The cache of the streams ``rows`` (one row per trial)."""
    return None if cache is None else [(k[rows], v[rows]) for k, v in cache]


def trim_cache(cache: KVCache, window: int | None, block_size: int) -> KVCache:
    """Keep the last ``window`` blocks of a cache (None: all)."""
    if window is None:
        return cache
    keep = window * block_size
    return [(k[:, :, -keep:], v[:, :, -keep:]) for k, v in cache]


class BlockCoder:
    """Encodes blocks one at a time for a batch of B streams, with cached context.

    ``window`` bounds the cached context in blocks (None: unbounded); positions keep counting
    when old blocks leave the cache.
    """

    def __init__(self, model, batch: int, window: int | None):
        self.model, self.batch, self.window = model, batch, window
        self.enc_cache: KVCache | None = None
        self.dec_cache: KVCache | None = None
        self.blocks_done = 0
        self.passes = 0  # decoder passes (each may score several candidate counts)
        self.encoder_passes = 0  # one per block when the encoder does not read the kept mask
        self.evaluations = 0  # candidate counts scored, summed over streams
        self._encoded: tuple[Tensor, KVCache] | None = None  # this block's encoder output, every token kept
        self._latents = None  # ... and its latents, for a mask-free encoder's candidates

    @property
    def cached_tokens(self) -> int:
        return 0 if self.enc_cache is None else self.enc_cache[0][0].shape[2]

    @property
    def start(self) -> int:
        """The RoPE position of the next block's first token."""
        return self.blocks_done * self.model.config.tokens_per_block

    def trial(self, patches: Tensor, counts: Tensor, rows: Tensor) -> Trial:
        """Encode+decode the block's ``patches`` (B, M, D) for stream ``rows[i]`` with ``counts[i]`` tokens."""
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
        if self._latents is None:
            every = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
            self._latents = self.model.latents_from_features(h, every)
        return self.model.drop_tokens(self._latents.rows(rows), mask), cache_rows(enc_kv, rows)

    def _all_kept(self, patches: Tensor) -> tuple[Tensor, KVCache]:
        """This block's encoder output with every token kept, for all streams, and its encoder cache.

        One encoder pass per block, shared by every candidate count of a mask-free encoder and by
        ``features`` (the length head's input).
        """
        if self._encoded is None:
            every = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
            self._encoded = self.model.encoder_features(patches, every, self.enc_cache, self.start)
            self.encoder_passes += 1
        return self._encoded

    def features(self, patches: Tensor) -> Tensor:
        """(B, 2*width): mean and standard deviation over tokens of the all-kept encoder output."""
        h = self._all_kept(patches)[0].float()
        return torch.cat([h.mean(1), h.std(1)], dim=-1)

    def commit(self, trial: Trial) -> None:
        """Make ``trial`` (one row per stream) the context for the next block."""
        m = self.model.config.tokens_per_block
        self.enc_cache = trim_cache(trial.enc_kv, self.window, m)
        self.dec_cache = trim_cache(trial.dec_kv, self.window, m)
        self._encoded = self._latents = None
        self.blocks_done += 1


@torch.no_grad()
def decode_blocks(model, block_tokens: Sequence[Sequence[Tensor]], window: int | None) -> Iterator[Tensor]:
    """Decode B streams of equal block count together, block by block with cached context.

    ``block_tokens[b][k]`` holds stream b's tokens of block k (code indices or float latents);
    yields (B, fpb, 3, H, W) float blocks in [-1, 1].
    """
    c = model.config
    m, device = c.tokens_per_block, module_device(model)
    cache, position = None, 0
    for k in range(len(block_tokens[0])):
        z = torch.zeros(len(block_tokens), m, c.latent_dim, device=device)
        for b, stream in enumerate(block_tokens):
            z[b, :len(stream[k])] = model.tokens_to_latents(stream[k].to(device))
        patches, cache = model.decode_latents(z, cache, start=position)
        position += m
        cache = trim_cache(cache, window, m)
        yield model.unpatchify(patches.float())
