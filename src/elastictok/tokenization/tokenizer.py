"""Adaptive tokenization (Algorithm 2 of the paper): per block, the fewest tokens that meet a target.

Blocks are decided in order. Each candidate count is tried by encoding and decoding the block
against the cached keys and values of the earlier blocks *as they were actually encoded*, so no
earlier block is ever recomputed; the cache keeps at most ``window`` blocks, so memory is flat
however long the video. Searches:

- ``full``: every count in [Mmin, Mmax]; exact, the reference (no monotonicity assumed).
- ``binary``: bisection, warm-started from the previous block's count (a galloping search); the
  same decision as plain bisection whenever quality rises with the count.
- ``batched``: a K-ary search scoring ``candidates`` counts per forward pass.
- ``regression``: a trained length head predicts the count in one pass (see ``length_head.py``).

Every search returns the smallest count it saw meet the target (Mmax when none did).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from ..media.io import MediaInfo, iter_media_blocks, to_model
from ..errors import ElasticTokError
from ..layers.transformer import KVCache
from .targets import Target

SEARCHES = ("binary", "full", "batched", "regression")

# A search proposes candidate counts (a list) and is sent back which of them met the target.
Probes = Generator[list[int], list[bool], None]


# ---- search strategies (pure: counts in, decisions out) ------------------------------------------------
def bisection(lo: int, hi: int, guess: int | None = None) -> Probes:
    """Smallest passing count in [lo, hi], assuming hi passes (it is the fallback) and monotone quality.

    With ``guess``, first probe there and gallop away from it with doubling steps, so a block
    that needs about what the previous one needed costs about two passes.
    """
    if guess is not None and lo <= guess < hi:
        if (yield [guess])[0]:
            hi, step = guess, 1
            while hi - step >= lo:
                if (yield [hi - step])[0]:
                    hi, step = hi - step, step * 2
                else:
                    lo = hi - step + 1
                    break
        else:
            lo, step = guess + 1, 1
            while lo + step - 1 < hi:
                probe = lo + step - 1
                if (yield [probe])[0]:
                    hi = probe
                    break
                lo, step = probe + 1, step * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if (yield [mid])[0]:
            hi = mid
        else:
            lo = mid + 1


def kary(lo: int, hi: int, k: int) -> Probes:
    """Like bisection, but k evenly spaced counts per pass: the interval shrinks k+1 times per pass."""
    while lo < hi:
        span = hi - lo  # candidates lie in [lo, hi - 1]
        picks = sorted({lo + (span * (i + 1)) // (k + 1) for i in range(k)} | ({lo} if span <= k else set()))
        picks = [p for p in picks if lo <= p < hi] or [lo]
        passed = yield picks
        first_pass = next((p for p, ok in zip(picks, passed) if ok), None)
        failed_below = [p for p, ok in zip(picks, passed) if not ok and (first_pass is None or p < first_pass)]
        if first_pass is not None:
            hi = first_pass
        if failed_below:
            lo = max(failed_below) + 1


def exhaustive(lo: int, hi: int, chunk: int) -> Probes:
    """Every count in [lo, hi], ``chunk`` per pass."""
    for start in range(lo, hi + 1, chunk):
        yield list(range(start, min(hi, start + chunk - 1) + 1))


# ---- the block-by-block coder ---------------------------------------------------------------------------
@dataclass
class Trial:
    """The outcome of encoding and decoding one block with given counts, for a batch of rows."""

    z: Tensor  # (R, M, C)
    indices: Tensor | None  # (R, M)
    recon: Tensor  # (R, fpb, 3, H, W)
    enc_kv: KVCache
    dec_kv: KVCache

    def rows(self, index: Tensor) -> "Trial":
        pick = lambda kv: [(k[index], v[index]) for k, v in kv]  # noqa: E731
        return Trial(self.z[index], None if self.indices is None else self.indices[index], self.recon[index],
                     pick(self.enc_kv), pick(self.dec_kv))


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
        self.passes = 0  # forward passes (each may score several candidate counts)
        self.evaluations = 0  # candidate counts scored, summed over streams

    @property
    def cached_tokens(self) -> int:
        return 0 if self.enc_cache is None else self.enc_cache[0][0].shape[2]

    def trial(self, patches: Tensor, counts: Tensor, rows: Tensor) -> Trial:
        """Encode+decode the block's ``patches`` (B, M, D) for stream ``rows[i]`` with ``counts[i]`` tokens."""
        m = self.model.config.tokens_per_block
        start = self.blocks_done * m
        mask = torch.arange(m, device=counts.device) < counts[:, None]
        take = lambda kv: None if kv is None else [(k[rows], v[rows]) for k, v in kv]  # noqa: E731
        latents, enc_kv = self.model.encode_patches(patches[rows], mask, take(self.enc_cache), start)
        recon, dec_kv = self.model.decode_latents(latents.z, take(self.dec_cache), start)
        self.passes += 1
        self.evaluations += len(rows)
        return Trial(latents.z, latents.indices, self.model.unpatchify(recon.float()), enc_kv, dec_kv)

    def commit(self, trial: Trial) -> None:
        """Make ``trial`` (one row per stream) the context for the next block."""
        keep = None if self.window is None else self.window * self.model.config.tokens_per_block
        trim = lambda kv: [(k[:, :, -keep:], v[:, :, -keep:]) if keep else (k, v) for k, v in kv]  # noqa: E731
        self.enc_cache, self.dec_cache = trim(trial.enc_kv), trim(trial.dec_kv)
        self.blocks_done += 1


# ---- results --------------------------------------------------------------------------------------------
@dataclass
class TokenizedVideo:
    """The tokens of one video or image, block by block, and what is needed to restore it."""

    counts: Tensor  # (n_blocks,) long: tokens kept per block
    tokens: Tensor  # FSQ: (sum(counts),) long code indices; VAE: (sum(counts), C) float latents
    scores: Tensor  # (n_blocks,) float: the target metric per block (MSE for a fixed count or budget)
    metric: str
    info: MediaInfo
    model_name: str
    config_hash: str
    max_tokens: int
    passes: int = 0  # encoder+decoder forward passes over the batch this input was tokenized in
    evaluations: int = 0  # candidate counts scored (block encodes+decodes) for this input
    seconds: float = 0.0

    @property
    def n_blocks(self) -> int:
        return len(self.counts)

    def block_tokens(self) -> list[Tensor]:
        return list(torch.split(self.tokens, self.counts.tolist()))


@dataclass
class _Stream:
    info: MediaInfo
    counts: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    tokens: list[Tensor] = field(default_factory=list)


class Tokenizer:
    """Adaptive tokenization with one model; ``ElasticTok.tokenize`` is the usual entry point."""

    def __init__(self, model, target: Target, search: str = "binary", window: int | None | str = "model",
                 candidates: int = 4, length_head=None, progress: bool = False,
                 on_block: Callable[[int, Tensor, "BlockCoder"], None] | None = None,
                 feature_sink: list[Tensor] | None = None, warm_start: bool = True):
        if search not in SEARCHES:
            raise ElasticTokError(f"unknown search {search!r}; use {', '.join(SEARCHES)}")
        if search == "regression" and length_head is None:
            raise ElasticTokError("search='regression' needs a trained length head (elastictok train-length-head)")
        window = resolve_window(model, window)
        if window is not None and window < 1:
            raise ElasticTokError("window must be at least 1 block")
        self.model, self.target, self.search, self.window = model, target, search, window
        self.candidates, self.length_head, self.progress, self.on_block = candidates, length_head, progress, on_block
        self.feature_sink = feature_sink  # collects each block's length-head features (for training one)
        self.warm_start = warm_start  # binary search starts from the previous block's count

    # One video stream or a batch of equal-length streams, block by block.
    @torch.no_grad()
    def run(self, blocks: Iterable[Tensor], infos: Sequence[MediaInfo], total: int | None = None
            ) -> list[TokenizedVideo]:
        """``blocks`` yields float blocks (B, fpb, 3, H, W) in [-1, 1], one stream per batch row."""
        model, c = self.model, self.model.config
        if self.target.budget is not None:
            raise ElasticTokError("a budget needs the whole input: use tokenize(), not Tokenizer.run()")
        started = time.perf_counter()
        streams = [_Stream(info) for info in infos]
        coder = BlockCoder(model, len(streams), self.window)
        previous: Tensor | None = None
        bar = tqdm(blocks, total=total, desc="tokenize", unit="block", disable=not self.progress)
        for block in bar:
            if block.shape[0] != len(streams):
                raise ElasticTokError(f"got a block of {block.shape[0]} streams for {len(streams)} inputs")
            block = block.to(next(model.parameters()).device)
            chosen, trial, scores = self._decide(coder, block, previous)
            coder.commit(trial)
            previous = chosen
            for i, stream in enumerate(streams):
                n = int(chosen[i])
                stream.counts.append(n)
                stream.scores.append(float(scores[i]))
                kept = trial.indices[i, :n] if trial.indices is not None else trial.z[i, :n].float()
                stream.tokens.append(kept.cpu())
            if self.on_block is not None:
                self.on_block(coder.blocks_done - 1, trial.recon, coder)
            bar.set_postfix(tokens=f"{chosen.float().mean():.0f}/{c.tokens_per_block}")
        if coder.blocks_done == 0:
            raise ElasticTokError("empty input: no frames to tokenize")
        elapsed = time.perf_counter() - started
        return [TokenizedVideo(
            counts=torch.tensor(s.counts), tokens=torch.cat(s.tokens), scores=torch.tensor(s.scores),
            metric=self.target.name if self.target.threshold is not None else "mse", info=s.info,
            model_name=c.name, config_hash=c.fingerprint(), max_tokens=c.tokens_per_block,
            passes=coder.passes, evaluations=coder.evaluations // len(streams), seconds=elapsed) for s in streams]

    def _decide(self, coder: BlockCoder, block: Tensor, previous: Tensor | None) -> tuple[Tensor, Trial, Tensor]:
        """Choose each stream's count for this block; return counts, the committed trial and scores."""
        c = self.model.config
        lo, hi = c.min_tokens, c.tokens_per_block
        b = block.shape[0]
        patches = self.model.patchify(block)
        all_rows = torch.arange(b, device=block.device)
        if self.feature_sink is not None:
            from .length_head import block_features
            self.feature_sink.append(block_features(self.model, patches, coder).cpu())
        if self.target.tokens is not None or self.search == "regression":
            if self.target.tokens is not None:
                counts = torch.full((b,), min(hi, max(lo, self.target.tokens)), dtype=torch.long)
            else:
                counts = self.length_head.predict(self.model, patches, coder, self.target).clamp(lo, hi)
            trial = coder.trial(patches, counts.to(block.device), all_rows)
            scores = self._scores(trial, block, all_rows)
            return counts, trial, scores

        searches: list[Probes] = []
        for i in range(b):
            if self.search == "full":
                searches.append(exhaustive(lo, hi, self.candidates * 8))
            elif self.search == "batched":
                searches.append(kary(lo, hi, self.candidates))
            else:
                guess = None if previous is None or not self.warm_start else int(previous[i])
                searches.append(bisection(lo, hi, guess))
        pending = {i: next(s, None) for i, s in enumerate(searches)}
        pending = {i: p for i, p in pending.items() if p}
        best: dict[int, tuple[int, Trial, float]] = {}
        while pending:
            rows = [i for i, probes in pending.items() for _ in probes]
            counts = [n for probes in pending.values() for n in probes]
            row_index = torch.tensor(rows, device=block.device)
            trial = coder.trial(patches, torch.tensor(counts, device=block.device), row_index)
            scores = self._scores(trial, block, row_index)
            passed = self.target.meets(scores).tolist()
            position = 0
            for i in list(pending):
                n_probes = len(pending[i])
                verdicts = passed[position:position + n_probes]
                for j, (n, ok) in enumerate(zip(pending[i], verdicts)):
                    if ok and (i not in best or n < best[i][0]):
                        best[i] = (n, trial.rows(torch.tensor([position + j])), float(scores[position + j]))
                position += n_probes
                try:
                    pending[i] = searches[i].send(verdicts)
                except StopIteration:
                    del pending[i]
        missing = [i for i in range(b) if i not in best]
        if missing:  # nothing met the target: fall back to every token
            rows = torch.tensor(missing, device=block.device)
            trial = coder.trial(patches, torch.full((len(missing),), hi, device=block.device), rows)
            scores = self._scores(trial, block, rows)
            for j, i in enumerate(missing):
                best[i] = (hi, trial.rows(torch.tensor([j])), float(scores[j]))
        chosen = torch.tensor([best[i][0] for i in range(b)])
        merged = _stack_trials([best[i][1] for i in range(b)])
        return chosen, merged, torch.tensor([best[i][2] for i in range(b)])

    def _scores(self, trial: Trial, block: Tensor, rows: Tensor) -> Tensor:
        target = self.target if self.target.threshold is not None else Target(metric="mse", threshold=0.0)
        return target.score(trial.recon, block[rows]).cpu()


def _stack_trials(trials: list[Trial]) -> Trial:
    if len(trials) == 1:
        return trials[0]
    cat_kv = lambda kvs: [(torch.cat([kv[layer][0] for kv in kvs]), torch.cat([kv[layer][1] for kv in kvs]))  # noqa: E731
                          for layer in range(len(kvs[0]))]
    return Trial(torch.cat([t.z for t in trials]),
                 None if trials[0].indices is None else torch.cat([t.indices for t in trials]),
                 torch.cat([t.recon for t in trials]), cat_kv([t.enc_kv for t in trials]), cat_kv([t.dec_kv for t in trials]))


# ---- whole inputs ------------------------------------------------------------------------------------------
def _tensor_blocks(video: Tensor, model) -> tuple[MediaInfo, Tensor]:
    """A (T, 3, H, W) video or (3, H, W) image tensor, padded to whole blocks by repeating its last frame."""
    c = model.config
    is_image = video.dim() == 3
    frames = video[None] if is_image else video
    if frames.dim() != 4:
        raise ElasticTokError(f"expected a video (T, 3, H, W) or image (3, H, W) per input, got {tuple(video.shape)}")
    if frames.shape[0] == 0:
        raise ElasticTokError("empty input: no frames to tokenize")
    n_real = frames.shape[0]
    pad = (-n_real) % c.frames_per_block if not is_image else c.frames_per_block - 1
    if pad:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    model._as_video(frames[None])  # shape, resolution and range checks with the model's messages
    info = MediaInfo("<tensor>", None, tuple(frames.shape[-2:]), 1 if is_image else n_real, is_image)
    return info, frames


def tokenize(model, inputs, target: Target, search: str = "binary", window: int | None | str = "model",
             candidates: int = 4, fps: float | None = None, fit: str = "crop", length_head=None,
             progress: bool = False, feature_sink: list[Tensor] | None = None
             ) -> TokenizedVideo | list[TokenizedVideo]:
    """Tokenize a batch tensor (B, T, 3, H, W) or (B, 3, H, W), a media file path, or a list of single
    inputs: unbatched videos (T, 3, H, W), images (3, H, W) or paths, of any lengths.

    A batch tensor or a list gives a list with one result per input; a single path gives one
    result. Files are streamed block by block; list items are tokenized one after another.
    """
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise ElasticTokError("empty input list")
        results = []
        for item in inputs:
            if isinstance(item, Tensor):
                if item.dim() not in (3, 4):
                    raise ElasticTokError(f"list items are single videos (T, 3, H, W) or images (3, H, W), "
                                          f"got {tuple(item.shape)}")
                item = item[None]
            out = tokenize(model, item, target, search, window, candidates, fps, fit, length_head, progress,
                           feature_sink)
            results.extend(out if isinstance(out, list) else [out])
        return results
    if target.budget is not None:
        return _tokenize_to_budget(model, inputs, target, search, window, candidates, fps, fit, progress)
    tokenizer = Tokenizer(model, target, search, window, candidates, length_head, progress,
                          feature_sink=feature_sink)
    fpb = model.config.frames_per_block
    if isinstance(inputs, Tensor):
        if inputs.dim() not in (4, 5):
            raise ElasticTokError(f"expected (B, T, 3, H, W) or (B, 3, H, W), got {tuple(inputs.shape)}")
        prepared = [_tensor_blocks(v, model) for v in inputs]
        if not prepared:
            raise ElasticTokError("empty input: batch of size 0")
        video = torch.stack([frames for _, frames in prepared])
        n_blocks = video.shape[1] // fpb
        blocks = (video[:, k * fpb:(k + 1) * fpb] for k in range(n_blocks))
        return tokenizer.run(blocks, [info for info, _ in prepared], total=n_blocks)
    info, blocks = iter_media_blocks(inputs, model.config.resolution, fpb, fps=fps, fit=fit,
                                     min_size=max(model.config.patch_size[1:]))
    total = 1 if info.is_image else math.ceil((info.expected_frames or 0) / fpb) or None
    return tokenizer.run((to_model(b)[None] for b in blocks), [info], total=total)[0]


def _tokenize_to_budget(model, inputs, target: Target, search, window, candidates, fps, fit, progress):
    """Spend at most ``target.budget`` tokens on the whole input, where they buy the most quality.

    Bisects an MSE threshold (on a log scale) so every block reaches the same quality, using the
    largest total that fits the budget: equal quality everywhere is where marginal tokens buy most
    when quality saturates with count. Each round is a full tokenization of the input.
    """
    c = model.config
    floor_total = None
    low, high = math.log(1e-6), math.log(1.0)  # MSE on [-1, 1] pixels
    best = None
    for _ in range(10):
        mid = (low + high) / 2
        result = tokenize(model, inputs, Target(metric="mse", threshold=math.exp(mid)), search, window,
                          candidates, fps, fit, None, progress)
        results = result if isinstance(result, list) else [result]
        total = sum(int(r.counts.sum()) for r in results)
        floor_total = sum(r.n_blocks for r in results) * c.min_tokens
        if total <= target.budget:
            best, high = result, mid  # fits: try a stricter threshold
        else:
            low = mid
    if best is None:
        raise ElasticTokError(f"a budget of {target.budget} tokens is below the minimum "
                              f"{floor_total} (Mmin={c.min_tokens} per block)")
    return best


@torch.no_grad()
def resolve_window(model, window: int | None | str) -> int | None:
    """``"model"`` means the model's own ``config.window``; numbers and None pass through."""
    return model.config.window if window == "model" else window


def iter_decode(model, encoded: TokenizedVideo, window: int | None | str = "model") -> Iterator[Tensor]:
    """Decode block by block with cached context; yields (fpb, 3, H, W) float blocks in [-1, 1]."""
    c = model.config
    check_compatible(model, encoded)
    window = resolve_window(model, window)
    m = c.tokens_per_block
    device = next(model.parameters()).device
    cache, position = None, 0
    for k, tokens in enumerate(encoded.block_tokens()):
        n = len(tokens)
        z = torch.zeros(1, m, c.latent_dim, device=device)
        if encoded.tokens.is_floating_point():
            z[0, :n] = tokens.to(device).float()
        else:
            z[0, :n] = model.quantizer.indices_to_codes(tokens.to(device))
        patches, cache = model.decode_latents(z, cache, start=position)
        position += m
        if window is not None:
            cache = [(kk[:, :, -window * m:], vv[:, :, -window * m:]) for kk, vv in cache]
        yield model.unpatchify(patches.float())[0]


def decoded_with_sources(model, encoded: TokenizedVideo, source, window: int | None | str = "model",
                         fps: float | None = None, fit: str = "crop") -> Iterator[tuple[Tensor, Tensor]]:
    """(reconstruction (fpb, 3, H, W) in [-1, 1], source block uint8 (fpb, H, W, 3)) per block, read afresh."""
    c = model.config
    _, blocks = iter_media_blocks(source, c.resolution, c.frames_per_block, fps=fps, fit=fit,
                                  min_size=max(c.patch_size[1:]))
    return zip(iter_decode(model, encoded, window), blocks)


def detokenize(model, encoded: TokenizedVideo, window: int | None | str = "model") -> Tensor:
    """The video (T, 3, H, W) with padding frames removed, or the image (3, H, W)."""
    video = torch.cat(list(iter_decode(model, encoded, window)))
    if encoded.info.is_image:
        return video.mean(0)
    return video[:encoded.info.frames] if encoded.info.frames else video


def check_compatible(model, encoded: TokenizedVideo) -> None:
    c = model.config
    if encoded.config_hash != c.fingerprint():
        raise ElasticTokError(f"these tokens were made by model {encoded.model_name!r} (config {encoded.config_hash}), "
                              f"not by this model {c.name!r} (config {c.fingerprint()}); decode with the same model")
    if encoded.tokens.is_floating_point() != (c.bottleneck == "vae"):
        raise ElasticTokError("token type does not match the model's bottleneck")
