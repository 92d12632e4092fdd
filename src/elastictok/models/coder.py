"""What every family's block coder shares: a batch of streams coded one block at a time against cached context.

A block coder tries candidate token counts for the current block of B streams (``trial``), keeps one
row per stream as the context of the next block (``commit``), and decodes stored tokens block by
block (``decode``). The counters, the caches, trimming them to ``window`` blocks and padding stored
tokens to a full block live here; each family's coder (``ModelFamily.coder_class``) brings the
encoding and decoding of its own tokens. A family whose decoder samples from noise
(``ModelFamily.has_sampler``) decodes with a ``Sampler``, the same one in ``trial`` and ``decode``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from ..errors import ElasticTokError
from ..layers.transformer import KVCache
from ..utils.fields import matches, short_repr, whole_number_problem

MAX_SAMPLER_STEPS = 1000
SAMPLER_FIELDS = ("steps", "guidance", "seed")


@dataclass(frozen=True)
class Sampler:
    """How a generative decoder draws each block: ``steps`` Euler steps from noise, classifier-free
    ``guidance`` (1: none) and the ``seed`` of the starting noise. Decoding is deterministic given all
    three; a token file records the sampler its scores were measured with."""

    steps: int
    guidance: float
    seed: int

    def __post_init__(self) -> None:
        problems = self.problems(self.steps, self.guidance, self.seed)
        if problems:
            raise ElasticTokError("invalid sampler: " + "; ".join(problems))

    @staticmethod
    def problems(steps: object, guidance: object, seed: object) -> list[str]:
        """One phrase per setting out of range: steps in [1, 1000], guidance in [0, 2^63), seed in [0, 2^63)."""
        found = [whole_number_problem("steps", steps, 1, MAX_SAMPLER_STEPS),
                 whole_number_problem("seed", seed, 0, 2**63 - 1)]
        if not (matches(guidance, "float") and guidance >= 0):
            found.append(f"guidance must be a number in [0, 2^63), got {short_repr(guidance)}")
        return [problem for problem in found if problem]

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


@dataclass
class Trial:
    """The outcome of encoding and decoding one block with given counts, for a batch of rows."""

    z: Tensor  # (R, M, C)
    indices: Tensor | None  # (R, M)
    recon: Tensor  # (R, fpb, 3, H, W)
    enc_kv: KVCache
    dec_kv: KVCache
    counts: Tensor | None = None  # (R,) the counts tried, for coders that commit from them (FlexTok)
    context: Tensor | None = None  # (R, ...) what the next block reads of this one, for sampling coders (FlexTok)

    def rows(self, index: Tensor) -> "Trial":
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return Trial(self.z[index], pick(self.indices), self.recon[index], cache_rows(self.enc_kv, index),
                     cache_rows(self.dec_kv, index), pick(self.counts), pick(self.context))

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

    def cat(name: str) -> Tensor | None:
        return None if getattr(trials[0], name) is None else torch.cat([getattr(t, name) for t in trials])

    return Trial(cat("z"), cat("indices"), cat("recon"), cat_kv([t.enc_kv for t in trials]),
                 cat_kv([t.dec_kv for t in trials]), cat("counts"), cat("context"))


def cache_rows(cache: KVCache | None, rows: Tensor) -> KVCache | None:
    """The cache of the streams ``rows`` (one row per trial); the cache itself, not a copy, when ``rows`` is
    every stream in order (one stream trying one count, as every fixed-length pass does)."""
    if not cache or (len(rows) == cache[0][0].shape[0]
                     and bool((rows == torch.arange(len(rows), device=rows.device)).all())):
        return cache
    return [(k[rows], v[rows]) for k, v in cache]


def trim_cache(cache: KVCache | None, window: int | None, block_size: int) -> KVCache | None:
    """Keep the last ``window`` blocks of a cache (None: all)."""
    if window is None or cache is None:
        return cache
    keep = window * block_size
    return [(k[:, :, -keep:], v[:, :, -keep:]) for k, v in cache]


def padded_latents(model, block_tokens: Sequence[Sequence[Tensor]], block: int, slots: int,
                   device: torch.device) -> Tensor:
    """Block ``block``'s stored tokens of every stream as latents (B, slots, C), zero past each stream's count."""
    z = torch.zeros(len(block_tokens), slots, model.config.latent_dim, device=device)
    for b, stream in enumerate(block_tokens):
        z[b, :len(stream[block])] = model.tokens_to_latents(stream[block].to(device))
    return z


class BlockCoder(ABC):
    """Codes blocks one at a time for a batch of B streams, with cached context.

    ``window`` bounds the cached context in blocks (None: unbounded); positions keep counting when
    old blocks leave the cache. ``sampler``: how a sampling family decodes (None: the model's
    default, ``model.sampler()``; always None for a family without one). ``encoded`` holds the
    current block's encoder output, shared by every candidate count of every stream, until ``commit``.
    """

    def __init__(self, model, batch: int, window: int | None, sampler: Sampler | None = None):
        self.model, self.batch, self.window = model, batch, window
        self.sampler = sampler if sampler is not None else model.sampler()
        self.enc_cache: KVCache | None = None
        self.dec_cache: KVCache | None = None
        self.blocks_done = 0
        self.passes = 0  # decoder passes (each may score several candidate counts)
        self.encoder_passes = 0  # encoder passes
        self.evaluations = 0  # candidate counts scored, summed over streams
        self.encoded: Any = None

    @property
    @abstractmethod
    def block_size(self) -> int:
        """Tokens one block occupies in the caches."""

    @property
    def cached_tokens(self) -> int:
        return 0 if self.enc_cache is None else self.enc_cache[0][0].shape[2]

    @property
    def start(self) -> int:
        """The RoPE position of the next block's first token."""
        return self.blocks_done * self.block_size

    @abstractmethod
    def trial(self, patches: Tensor, counts: Tensor, rows: Tensor) -> Trial:
        """Encode and decode the block's ``patches`` (B, N, D) for stream ``rows[i]`` with ``counts[i]`` tokens."""

    @abstractmethod
    def next_context(self, trial: Trial) -> tuple[KVCache, KVCache]:
        """The encoder and decoder caches, untrimmed, once ``trial`` (one row per stream) is this block."""

    def commit(self, trial: Trial) -> None:
        """Make ``trial`` (one row per stream) the context for the next block."""
        enc, dec = self.next_context(trial)
        self.enc_cache = trim_cache(enc, self.window, self.block_size)
        self.dec_cache = trim_cache(dec, self.window, self.block_size)
        self.encoded = None
        self.blocks_done += 1

    def share_encodings(self, shared: dict) -> None:
        """Take part in ``shared`` (a dict, empty at first) with other coders of the same input stepped together
        block by block (the same input at other counts or targets): a family whose encoder output never depends
        on the counts kept encodes each block once for all of them, bit for bit what each would have computed.
        By default a coder encodes for itself."""

    def features(self, patches: Tensor) -> Tensor:
        """(B, F) the block's encoder features, which the length head (search regression) reads."""
        raise ElasticTokError(f"the length head (search regression) reads encoder features that "
                              f"{self.model.display_name} does not give; use a search")

    @classmethod
    @abstractmethod
    def decode(cls, model, block_tokens: Sequence[Sequence[Tensor]], window: int | None,
               sampler: Sampler | None = None) -> Iterator[Tensor]:
        """Decode B streams of equal block count together, block by block with cached context.

        ``block_tokens[b][k]`` holds stream b's stored tokens of block k; yields (B, fpb, 3, H, W)
        float blocks in [-1, 1]. ``sampler`` as in ``__init__``: what ``trial`` used gives its frames."""
