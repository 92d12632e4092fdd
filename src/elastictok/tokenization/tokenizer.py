"""Adaptive tokenization (Algorithm 2 of the paper): per block, the fewest tokens that meet a target.

Blocks are decided in order by a ``BlockCoder`` (``coder.py``); which counts to try comes from a
search (``search.py``), or from a trained length head in one pass (``search="regression"``,
``length_head.py``). ``tokenize`` and ``detokenize`` are the entry points; ``model.tokenize`` and
``model.detokenize`` call them.

Batched in, batched out: a list, or a tensor with a batch dimension (as ``model.encode`` takes),
gives a list with one result per input; a single file path gives one result. ``detokenize`` is
the mirror image: a list of ``TokenizedVideo`` (or .etok paths) gives a list of videos, decoded
together, and a single one gives one video.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import ElasticTokError
from ..media.blocks import MediaInfo, describe_fit, iter_media_blocks, pixel_blocks
from ..media.transforms import to_model, unfit
from ..models.coder import BlockCoder, Trial, stack_trials
from ..utils.blocks import image_as_block, pad_to_blocks, trim_padding
from ..utils.console import counted, progress_bar
from ..utils.runtime import module_device
from .length_head import default_length_head
from .options import TokenizeOptions
from .search import make_search
from .targets import Target, Threshold, as_target
from .tokenfile import TokenizedVideo, check_is_tokenized, check_tokenized, read_etok

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    info: MediaInfo
    counts: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    tokens: list[Tensor] = field(default_factory=list)

    def result(self, model, target: Target, metric: str, coder: BlockCoder, seconds: float, streams: int,
               weights_hash: str) -> TokenizedVideo:
        c, scores = model.config, torch.tensor(self.scores)
        return TokenizedVideo(counts=torch.tensor(self.counts), tokens=torch.cat(self.tokens),
                              scores=scores, metric=metric, info=self.info, model_name=c.name,
                              config_hash=c.fingerprint(), max_tokens=c.tokens_per_block, passes=coder.passes,
                              encoder_passes=coder.encoder_passes,
                              evaluations=coder.evaluations // streams, seconds=seconds, family=model.family,
                              weights_hash=weights_hash, codebook_size=model.codebook_size, target=target.key,
                              met=target.meets(scores), sampler=coder.sampler)


class Tokenizer:
    """Adaptive tokenization of block streams with one model and one per-block target.

    ``options`` (or keyword overrides of it) say how; ``before_block(coder, block, patches)`` is called
    before each block is decided (the length head's trainer records error curves there), and
    ``on_block(k, recon, coder)`` after it.
    """

    def __init__(self, model, target: Target | str, options: TokenizeOptions | None = None, *,
                 before_block: Callable[[BlockCoder, Tensor, Tensor], None] | None = None,
                 on_block: Callable[[int, Tensor, BlockCoder], None] | None = None, **overrides):
        self.model, self.target = model, as_target(target)
        if self.target.whole_input:
            raise ElasticTokError(f"{self.target} needs the whole input: use tokenize(), not Tokenizer.run()")
        self.target.check_model(model.config)
        self.options = TokenizeOptions.build(options, **overrides)
        self.window = self.options.resolve_window(model)
        self.sampler = self.options.resolve_sampler(model)
        self.before_block, self.on_block = before_block, on_block
        self.scorer = self.target.scorer
        self.length_head = self.options.length_head
        if self.options.search == "regression" and self.length_head is None:
            self.length_head = default_length_head(model)

    @torch.no_grad()
    def run(self, blocks: Iterable[Tensor], infos: Sequence[MediaInfo], total: int | None = None
            ) -> list[TokenizedVideo]:
        """``blocks`` yields float blocks (B, fpb, 3, H, W) in [-1, 1], one stream per batch row."""
        started = time.perf_counter()
        coding = self.start(infos)
        bar = progress_bar(blocks, total=total, desc="tokenize", unit="block", show=self.options.progress)
        for block in bar:
            chosen = coding.add(block)
            bar.set_postfix(tokens=f"{chosen.float().mean():.0f}/{self.model.config.tokens_per_block}")
        return coding.results(time.perf_counter() - started)

    def start(self, infos: Sequence[MediaInfo], shared_encodings: dict | None = None) -> Coding:
        """A tokenization of streams ``infos`` to add blocks to one at a time. Codings of the same input (the
        same blocks added to each in turn) may pass one ``shared_encodings`` dict to encode each block once
        (see ``BlockCoder.share_encodings``)."""
        return Coding(self, infos, shared_encodings)

    def _decide(self, coder: BlockCoder, block: Tensor, previous: Tensor | None) -> tuple[Tensor, Trial, Tensor]:
        """Choose each stream's count for this block; return counts, the committed trial and scores."""
        patches = self.model.patchify(block)
        if self.before_block is not None:
            self.before_block(coder, block, patches)
        if self.target.fixed_tokens is not None or self.options.search == "regression":
            counts = self._one_pass_counts(coder, block, patches)
            rows = torch.arange(block.shape[0], device=block.device)
            trial = coder.trial(patches, counts.to(block.device), rows)
            return counts, trial, self._scores(trial, block, rows)
        return self._search(coder, block, patches, previous)

    def _one_pass_counts(self, coder: BlockCoder, block: Tensor, patches: Tensor) -> Tensor:
        """Counts without a search: the fixed count, or the length head's prediction, within [Mmin, Mmax]."""
        c = self.model.config
        lo, hi = c.min_tokens, c.tokens_per_block
        if self.target.fixed_tokens is not None:
            return torch.full((patches.shape[0],), self.target.fixed_tokens, dtype=torch.long)
        return self.length_head.predict(coder, block, patches, self.target).clamp(lo, hi)

    def _search(self, coder: BlockCoder, block: Tensor, patches: Tensor, previous: Tensor | None
                ) -> tuple[Tensor, Trial, Tensor]:
        """Run one search per stream, scoring every stream's pending candidates in one pass."""
        c, o, b = self.model.config, self.options, block.shape[0]
        lo, hi = c.min_tokens, c.tokens_per_block
        guesses = [None if previous is None or not o.warm_start else int(previous[i]) for i in range(b)]
        searches = [make_search(o.search, lo, hi, o.candidates, guesses[i]) for i in range(b)]
        pending = {i: p for i, p in ((i, next(s, None)) for i, s in enumerate(searches)) if p}
        best: dict[int, tuple[int, Trial, float]] = {}
        while pending:
            rows = torch.tensor([i for i, probes in pending.items() for _ in probes], device=block.device)
            counts = torch.tensor([n for probes in pending.values() for n in probes], device=block.device)
            trial = coder.trial(patches, counts, rows)
            scores = self._scores(trial, block, rows)
            passed = self.scorer.meets(scores).tolist()
            position = 0
            for i in list(pending):
                verdicts = passed[position:position + len(pending[i])]
                for j, (n, ok) in enumerate(zip(pending[i], verdicts)):
                    if ok and (i not in best or n < best[i][0]):
                        best[i] = (n, trial.rows(torch.tensor([position + j])), float(scores[position + j]))
                position += len(pending[i])
                try:
                    pending[i] = searches[i].send(verdicts)
                except StopIteration:
                    del pending[i]
        self._fall_back_to_all(coder, block, patches, best)
        chosen = torch.tensor([best[i][0] for i in range(b)])
        return chosen, stack_trials([best[i][1] for i in range(b)]), torch.tensor([best[i][2] for i in range(b)])

    def _fall_back_to_all(self, coder: BlockCoder, block: Tensor, patches: Tensor, best: dict) -> None:
        """Streams where no count met the target keep every token."""
        hi = self.model.config.tokens_per_block
        missing = [i for i in range(block.shape[0]) if i not in best]
        if not missing:
            return
        rows = torch.tensor(missing, device=block.device)
        trial = coder.trial(patches, torch.full((len(missing),), hi, device=block.device), rows)
        scores = self._scores(trial, block, rows)
        for j, i in enumerate(missing):
            best[i] = (hi, trial.rows(torch.tensor([j])), float(scores[j]))

    def _scores(self, trial: Trial, block: Tensor, rows: Tensor) -> Tensor:
        return self.scorer.score(trial.recon, block[rows]).cpu()


class Coding:
    """One tokenization under way, a block at a time: a ``Tokenizer``'s coder and its streams."""

    def __init__(self, tokenizer: Tokenizer, infos: Sequence[MediaInfo], shared_encodings: dict | None = None):
        model = tokenizer.model
        self.tokenizer, self.streams = tokenizer, [_Stream(info) for info in infos]
        self.coder = model.coder_class(model, len(self.streams), tokenizer.window, tokenizer.sampler)
        if shared_encodings is not None:
            self.coder.share_encodings(shared_encodings)
        self.previous: Tensor | None = None  # the counts chosen for the last block

    @torch.no_grad()
    def add(self, block: Tensor) -> Tensor:
        """Decide the next block (B, fpb, 3, H, W) in [-1, 1] of every stream; returns the counts chosen."""
        tokenizer, coder = self.tokenizer, self.coder
        if block.shape[0] != len(self.streams):
            raise ElasticTokError(f"got a block of {block.shape[0]} streams for {len(self.streams)} inputs")
        chosen, trial, scores = tokenizer._decide(coder, block.to(module_device(tokenizer.model)), self.previous)
        coder.commit(trial)
        self.previous = chosen
        for i, stream in enumerate(self.streams):
            stream.counts.append(int(chosen[i]))
            stream.scores.append(float(scores[i]))
            # a copy: a view would keep the trial's whole row of indices alive for the rest of the run
            stream.tokens.append(trial.kept_tokens(i, int(chosen[i])).to("cpu", copy=True))
        if tokenizer.on_block is not None:
            tokenizer.on_block(coder.blocks_done - 1, trial.recon, coder)
        return chosen

    def results(self, seconds: float) -> list[TokenizedVideo]:
        """One ``TokenizedVideo`` per stream; ``seconds``: the time the tokenization took."""
        if self.coder.blocks_done == 0:
            raise ElasticTokError("empty input: no frames to tokenize")
        t = self.tokenizer
        weights_hash = t.model.weights_digest()
        return [s.result(t.model, t.target, t.scorer.name, self.coder, seconds, len(self.streams), weights_hash)
                for s in self.streams]


# ---- whole inputs ------------------------------------------------------------------------------------------
def _tensor_blocks(video: Tensor, model) -> tuple[MediaInfo, Tensor]:
    """A (T, 3, H, W) video or (3, H, W) image tensor, padded to whole blocks by repeating its last frame."""
    fpb = model.config.frames_per_block
    is_image = video.dim() == 3
    if video.dim() not in (3, 4):
        raise ElasticTokError(f"expected a video (T, 3, H, W) or image (3, H, W) per input, got {tuple(video.shape)}")
    frames = image_as_block(video[None], fpb) if is_image else video
    if frames.shape[0] == 0:
        raise ElasticTokError("empty input: no frames to tokenize")
    n_real = frames.shape[0]
    frames = pad_to_blocks(frames, fpb)
    model.as_video(frames[None])  # shape, resolution and range checks with the model's messages
    info = MediaInfo("<tensor>", None, tuple(frames.shape[-2:]), 1 if is_image else n_real, is_image)
    return info, frames.to(next(model.parameters()).dtype)  # float64 or float16 pixels: the model's own type


def _check_channels(shape: torch.Size, layouts: str) -> None:
    """Three colour channels before height and width, or one line quoting the shape as the caller gave it."""
    if len(shape) >= 3 and shape[-3] != 3:
        hint = ": channels last? x.movedim(-1, -3) puts them first" if shape[-1] == 3 else ""
        raise ElasticTokError(f"expected {layouts} with 3 colour channels, got {tuple(shape)}{hint}")


def _tokenize_tensor(model, batch: Tensor, target: Target, options: TokenizeOptions, **hooks
                     ) -> list[TokenizedVideo]:
    if batch.is_meta:
        raise ElasticTokError("a tensor on the meta device holds no pixels to tokenize")
    if batch.dim() not in (4, 5):
        raise ElasticTokError(f"expected (B, T, 3, H, W) or (B, 3, H, W), got {tuple(batch.shape)}")
    _check_channels(batch.shape, "(B, T, 3, H, W) or (B, 3, H, W)")
    prepared = [_tensor_blocks(v, model) for v in batch]
    if not prepared:
        raise ElasticTokError("empty input: batch of size 0")
    video = torch.stack([frames for _, frames in prepared])
    fpb = model.config.frames_per_block
    n_blocks = video.shape[1] // fpb
    blocks = (video[:, k * fpb:(k + 1) * fpb] for k in range(n_blocks))
    return Tokenizer(model, target, options, **hooks).run(blocks, [info for info, _ in prepared], n_blocks)


def read_source(model, source, options: TokenizeOptions | None = None) -> tuple[MediaInfo, Iterator[Tensor]]:
    """A media file's info and its uint8 blocks (fpb, H, W, 3), fitted as ``model`` tokenizes it."""
    c, options = model.config, options or TokenizeOptions()
    return iter_media_blocks(source, c.resolution, c.frames_per_block, fps=options.fps, fit=options.fit,
                             min_size=max(c.patch_size[1:]))


def tokenize_blocks(model, info: MediaInfo, blocks: Iterable[Tensor], target: Target | str,
                    options: TokenizeOptions | None = None, total: int | None = None, **overrides) -> TokenizedVideo:
    """``model.tokenize(path, target)`` on the uint8 blocks of ``read_source(model, path)``: streamed,
    or read once by a caller that tokenizes one input many times (an evaluation). ``total`` sizes
    the progress bar (default: ``len(blocks)`` when it has one)."""
    tokenizer = Tokenizer(model, target, options, **overrides)
    total = total if total is not None else len(blocks) if isinstance(blocks, Sequence) else None
    return tokenizer.run((to_model(b)[None] for b in blocks), [info], total=total)[0]


def _tokenize_file(model, path, target: Target, options: TokenizeOptions, **hooks) -> TokenizedVideo:
    c = model.config
    info, blocks = read_source(model, path, options)
    total = 1 if info.is_image else math.ceil((info.expected_frames or 0) / c.frames_per_block) or None
    return tokenize_blocks(model, info, blocks, target, options, total=total, **hooks)


def _pixels(item) -> tuple[Tensor, str] | None:
    """A PIL image or a uint8 numpy array as uint8 frames (T, H, W, 3) and a name; None for anything else."""
    if isinstance(item, Image.Image):
        return torch.from_numpy(np.array(item.convert("RGB")))[None], "<PIL image>"
    if not isinstance(item, np.ndarray):
        return None
    if item.dtype != np.uint8 or item.ndim not in (3, 4) or item.shape[-1] != 3:
        raise ElasticTokError(f"a numpy array is read as uint8 pixels (H, W, 3) or (T, H, W, 3), got {item.dtype} "
                              f"{item.shape}; pass values in [-1, 1] as a torch tensor (3, H, W) or (T, 3, H, W)")
    frames = torch.from_numpy(np.ascontiguousarray(item))
    return (frames[None] if item.ndim == 3 else frames), "<array>"


def _tokenize_pixels(model, frames: Tensor, source: str, target: Target, options: TokenizeOptions, **hooks
                     ) -> TokenizedVideo:
    """uint8 frames (T, H, W, 3) of a PIL image (T = 1) or numpy array, fitted to the model as a file is."""
    c, is_image = model.config, source == "<PIL image>" or len(frames) == 1
    info, blocks = pixel_blocks(frames, c.resolution, c.frames_per_block, options.fit, source, is_image)
    return tokenize_blocks(model, info, blocks, target, options, **hooks)


def _tokenize_one(model, inputs, target: Target, options: TokenizeOptions, **hooks) -> list[TokenizedVideo]:
    """A batch tensor, a path, a PIL image or a numpy array, for a per-block target; ``hooks``: the
    ``Tokenizer``'s callbacks."""
    pixels = _pixels(inputs)
    if pixels is not None:
        return [_tokenize_pixels(model, *pixels, target, options, **hooks)]
    if isinstance(inputs, Tensor):
        return _tokenize_tensor(model, inputs, target, options, **hooks)
    if not isinstance(inputs, (str, os.PathLike)):
        raise ElasticTokError(f"cannot tokenize a {type(inputs).__name__}: pass a tensor, a media file path, a PIL "
                              "image, a numpy uint8 array, or a list of them")
    return [_tokenize_file(model, inputs, target, options, **hooks)]


def _as_batch_item(item):
    """A list item: a single video (T, 3, H, W) or image (3, H, W) gets its batch dimension; paths pass."""
    if not isinstance(item, Tensor):
        return item
    if item.dim() not in (3, 4):
        raise ElasticTokError(f"list items are single videos (T, 3, H, W) or images (3, H, W), got {tuple(item.shape)}")
    _check_channels(item.shape, "single videos (T, 3, H, W) or images (3, H, W)")
    return item[None]


def tokenize(model, inputs, target: Target | str, options: TokenizeOptions | None = None,
             **overrides) -> TokenizedVideo | list[TokenizedVideo]:
    """Tokenize a batch tensor (B, T, 3, H, W) or (B, 3, H, W), a media file path, or a list of single
    inputs: unbatched videos (T, 3, H, W), images (3, H, W) or paths, of any lengths. Tensors hold
    values in [-1, 1] at the model's size; a PIL image, or a numpy uint8 array (H, W, 3) or (T, H, W, 3)
    of pixels (0 to 255, RGB), is fitted to the model's size as a file is (``options.fit``).

    ``target``: a ``Threshold``, ``TokenCount`` or ``Budget``, or text such as ``"psnr:30"``;
    ``options``: a ``TokenizeOptions``, or its fields as keywords. A batch tensor or a list gives a
    list with one result per input; a single path gives one result. Files are streamed block by
    block; list items are tokenized one after another. An input resized to the model's size, and
    blocks that missed the target, are each told in one log line (``TokenizedVideo.met`` records which).
    """
    target, options = as_target(target), TokenizeOptions.build(options, **overrides)
    single = not isinstance(inputs, (list, tuple, Tensor))
    if isinstance(inputs, (list, tuple)) and not inputs:
        raise ElasticTokError("empty input list")
    items = [_as_batch_item(i) for i in inputs] if isinstance(inputs, (list, tuple)) else [inputs]
    results: list[TokenizedVideo] = []
    for item in items:
        if target.whole_input:
            done = _tokenize_to_budget(model, item, target, options)
        else:
            done = _tokenize_one(model, item, target, options)
        for result in done:
            _tell(model, result, target)
        results.extend(done)
    return results[0] if single else results


def _tell(model, result: TokenizedVideo, target: Target) -> None:
    """One log line when the input was fitted to the model's size, and one when blocks missed the target."""
    fitted = describe_fit(result.info, model.config.resolution)
    if fitted is not None:
        line, reshaped = fitted
        (log.warning if reshaped else log.info)(line)
    if result.met is None or bool(result.met.all()):
        return
    name = Path(result.info.source).name
    if result.met.any():
        missed = counted(int((~result.met).sum()), "block")
        log.warning(f"{name}: {result.met_line()}; {missed} fell short of it")
        return
    best = int(result.scores.argmax() if target.higher_is_better else result.scores.argmin())
    log.warning(f"{name}: no block met {target.key}, out of this model's reach: the best block reached "
                f"{target.name} {float(result.scores[best]):.4g} with {int(result.counts[best])} tokens")


def tokenize_watched(model, inputs: list, target: Target | str,
                     before_block: Callable[[BlockCoder, Tensor, Tensor], None], **overrides) -> list[TokenizedVideo]:
    """``tokenize`` of a list of single inputs for a per-block target, calling ``before_block(coder, block,
    patches)`` before each block is decided: how ``elastictok.training.length_head`` records error curves."""
    target, options = as_target(target), TokenizeOptions.build(None, **overrides)
    return [r for item in inputs for r in _tokenize_one(model, _as_batch_item(item), target, options,
                                                        before_block=before_block)]


def _tokenize_to_budget(model, inputs, target: Target, options: TokenizeOptions) -> list[TokenizedVideo]:
    """Spend at most ``target.tokens`` on the whole input, where they buy the most quality.

    Bisects an MSE threshold (on a log scale) so every block reaches the same quality, using the
    largest total that fits the budget: equal quality everywhere is where marginal tokens buy most
    when quality saturates with count. Each round is a full tokenization of the input.
    """
    c = model.config
    floor_total = None
    low, high = math.log(1e-6), math.log(1.0)  # MSE on [-1, 1] pixels
    best, seconds = None, 0.0
    for _ in range(10):
        mid = (low + high) / 2
        results = _tokenize_one(model, inputs, Threshold("mse", math.exp(mid)), options)
        seconds += results[0].seconds
        total = sum(int(r.counts.sum()) for r in results)
        floor_total = sum(r.n_blocks for r in results) * c.min_tokens
        if total <= target.tokens:
            best, high = results, mid  # fits: try a stricter threshold
        else:
            low = mid
    if best is None:
        raise ElasticTokError(f"a budget of {target.tokens} tokens is below the minimum "
                              f"{floor_total} (Mmin={c.min_tokens} per block)")
    for r in best:
        r.seconds = seconds  # what the whole bisection took, not its last round
        r.target, r.met = target.key, target.meets(r.scores)  # met: the budget, not the round's threshold
    return best


# ---- decoding ----------------------------------------------------------------------------------------------
def check_compatible(model, encoded: TokenizedVideo, weights_hash: str | None = None) -> None:
    """Refuse tokens that ``model`` did not make (``weights_hash``: its ``weights_digest()``, if known)."""
    check_is_tokenized(encoded)
    c = model.config
    if encoded.family != model.family:
        raise ElasticTokError(f"these tokens come from a model of the {encoded.family} family, and {c.name!r} is of "
                              f"the {model.family} family: decode with the model that made them")
    if encoded.config_hash != c.fingerprint():
        raise ElasticTokError(f"these tokens were made by model {encoded.model_name!r} (config {encoded.config_hash}), "
                              f"not by this model {c.name!r} (config {c.fingerprint()}); decode with the same model")
    if encoded.weights_hash:
        weights_hash = weights_hash or model.weights_digest()
        if encoded.weights_hash != weights_hash:
            raise ElasticTokError(f"these tokens were made by other weights of model {encoded.model_name!r} (weights "
                                  f"{encoded.weights_hash}, this model's {weights_hash}); decode with the same model")
    if encoded.tokens.is_floating_point() == (model.codebook_size > 0):
        raise ElasticTokError("token type does not match the model's bottleneck")
    _check_fields(model, encoded)
    check_tokenized(encoded, model.codebook_size)  # made in memory, they may not hold together


def _check_fields(model, encoded: TokenizedVideo) -> None:
    """The token file's max_tokens, codebook, counts, indices and frames against ``model``."""
    c, codebook = model.config, model.codebook_size
    if encoded.max_tokens != c.tokens_per_block:
        raise ElasticTokError(f"the tokens say max_tokens {encoded.max_tokens} per block, but this model has "
                              f"{c.tokens_per_block}")
    if encoded.codebook_size is not None and encoded.codebook_size != codebook:
        raise ElasticTokError(f"the tokens say codebook_size {encoded.codebook_size}, but this model's is {codebook}")
    counts = encoded.counts
    if len(counts) and (counts.min() < c.min_tokens or counts.max() > c.tokens_per_block):
        raise ElasticTokError(f"tokens per block must lie in [Mmin, Mmax] = [{c.min_tokens}, {c.tokens_per_block}], "
                              f"got [{int(counts.min())}, {int(counts.max())}]")
    tokens = encoded.tokens
    if not tokens.is_floating_point() and tokens.numel() and (tokens.min() < 0 or tokens.max() >= codebook):
        raise ElasticTokError(f"token indices must lie in [0, {codebook})")
    if tokens.is_floating_point() and tuple(tokens.shape[1:]) != (c.latent_dim,):
        raise ElasticTokError(f"the tokens are latents of shape {tuple(tokens.shape[1:])}, but this model's are "
                              f"({c.latent_dim},)")
    frames, n, fpb = encoded.info.frames, encoded.n_blocks, c.frames_per_block
    if not encoded.info.is_image and frames and not (n - 1) * fpb < frames <= n * fpb:
        raise ElasticTokError(f"the tokens say {frames} frames, but {n} blocks of {fpb} frames hold "
                              f"{(n - 1) * fpb + 1} to {n * fpb}")


def iter_decode(model, encoded: TokenizedVideo, window: int | None | str = "model",
                **sampler: int | float | None) -> Iterator[Tensor]:
    """Decode block by block with cached context; yields (fpb, 3, H, W) float blocks in [-1, 1]. ``sampler``:
    ``steps``, ``guidance``, ``seed`` over the sampler the tokens record (see ``ModelFamily.sampler``)."""
    check_compatible(model, encoded)
    chosen = model.sampler(encoded.sampler, **sampler)
    window = TokenizeOptions(window=window).resolve_window(model)
    for blocks in model.coder_class.decode(model, [encoded.block_tokens()], window, chosen):
        yield blocks[0]


SIZES = ("model", "source")  # what size detokenize gives back


def at_source_size(frames: Tensor, encoded: TokenizedVideo) -> Tensor:
    """Decoded frames (..., 3, h, w) at the size of the source they were tokenized from, the fit undone
    (see ``media.transforms.unfit``; token files that do not record their fit were centre-cropped)."""
    size = tuple(encoded.info.size)
    if size == tuple(frames.shape[-2:]):
        return frames
    return unfit(frames, size, encoded.info.fit or "crop")


def _restore(video: Tensor, encoded: TokenizedVideo, size: str) -> Tensor:
    """Decoded frames (T, 3, H, W) to what was tokenized: padding dropped, an image averaged over its block,
    at the source's size if asked."""
    video = video.mean(0) if encoded.info.is_image else torch.cat(list(trim_padding([video], encoded.info.frames)))
    return at_source_size(video, encoded) if size == "source" else video


def detokenize(model, encoded, window: int | None | str = "model", size: str = "model", *,
               steps: int | None = None, guidance: float | None = None, seed: int | None = None):
    """Videos (T, 3, H, W) with padding frames removed, or images (3, H, W).

    ``encoded``: a ``TokenizedVideo`` or .etok path (one tensor back), or a list of them (a list
    back; inputs with the same number of blocks and sampler are decoded together as one batch). ``size``:
    ``"model"`` (the model's frame size) or ``"source"`` (each input's own size, the fit undone).
    ``steps``, ``guidance``, ``seed``: a sampling family's settings (None: what the tokens record, as they
    were scored, else the model's config); a family without a sampler refuses them.
    """
    if size not in SIZES:
        raise ElasticTokError(f"size must be 'model' or 'source', got {size!r}")
    single = not isinstance(encoded, (list, tuple))
    items = [read_etok(e) if isinstance(e, (str, os.PathLike)) else e for e in ([encoded] if single else encoded)]
    weights_hash = model.weights_digest()
    for item in items:
        check_compatible(model, item, weights_hash)
    samplers = [model.sampler(item.sampler, steps=steps, guidance=guidance, seed=seed) for item in items]
    window = TokenizeOptions(window=window).resolve_window(model)
    videos: list[Tensor | None] = [None] * len(items)
    for n_blocks, sampler in dict.fromkeys(zip((item.n_blocks for item in items), samplers)):
        group = [i for i, item in enumerate(items) if (item.n_blocks, samplers[i]) == (n_blocks, sampler)]
        blocks = list(model.coder_class.decode(model, [items[i].block_tokens() for i in group], window, sampler))
        decoded = torch.cat(blocks, dim=1)  # (B, T, 3, H, W)
        for row, i in enumerate(group):
            videos[i] = _restore(decoded[row], items[i], size)
    return videos[0] if single else videos
