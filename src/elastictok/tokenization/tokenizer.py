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

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import ElasticTokError
from ..media.blocks import MediaInfo, iter_media_blocks
from ..media.transforms import to_model
from ..metrics.quality import METRICS
from ..models.base import provide_tokenization
from ..utils.blocks import image_as_block, pad_to_blocks, trim_padding
from ..utils.runtime import module_device
from .coder import BlockCoder, Trial, decode_blocks, stack_trials
from .flex_coder import FlexBlockCoder, decode_flex_blocks
from .length_head import count_grid, error_curves, head_inputs
from .options import TokenizeOptions
from .search import make_search
from .targets import MSE_SCORE, Budget, Target, Threshold, TokenCount, as_target
from .tokenfile import TokenizedVideo, check_is_tokenized, check_tokenized, read_etok

# family -> (block coder, batched block decoder); a family not listed uses ElasticTok's.
CODERS: dict[str, tuple[type, Callable]] = {"flextok": (FlexBlockCoder, decode_flex_blocks)}


def _coder(model) -> tuple[type, Callable]:
    return CODERS.get(getattr(model, "family", ""), (BlockCoder, decode_blocks))


@dataclass
class _Stream:
    info: MediaInfo
    counts: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    tokens: list[Tensor] = field(default_factory=list)

    def result(self, model, metric: str, coder: BlockCoder, seconds: float, streams: int,
               weights_hash: str) -> TokenizedVideo:
        c = model.config
        return TokenizedVideo(counts=torch.tensor(self.counts), tokens=torch.cat(self.tokens),
                              scores=torch.tensor(self.scores), metric=metric, info=self.info, model_name=c.name,
                              config_hash=c.fingerprint(), max_tokens=c.tokens_per_block, passes=coder.passes,
                              encoder_passes=coder.encoder_passes,
                              evaluations=coder.evaluations // streams, seconds=seconds, family=model.family,
                              weights_hash=weights_hash)


def check_token_count(model, target: Target) -> None:
    """A fixed count outside the model's [Mmin, Mmax] is an error, not a silent clamp."""
    c = model.config
    if isinstance(target, TokenCount) and not c.min_tokens <= target.tokens <= c.tokens_per_block:
        raise ElasticTokError(f"tokens:{target.tokens} is outside this model's range [Mmin, Mmax] = "
                              f"[{c.min_tokens}, {c.tokens_per_block}]")


class Tokenizer:
    """Adaptive tokenization of block streams with one model and one per-block target.

    ``options`` (or keyword overrides of it) say how; ``on_block(k, recon, coder)`` is called after
    each block, and ``curve_sink`` collects each block's length-head inputs and its MSE at every count
    of the head's grid (to train one: ``elastictok.training.length_head``).
    """

    def __init__(self, model, target: Target | str, options: TokenizeOptions | None = None, *,
                 on_block: Callable[[int, Tensor, BlockCoder], None] | None = None,
                 curve_sink: list[tuple[Tensor, Tensor]] | None = None, **overrides):
        self.model, self.target = model, as_target(target)
        if isinstance(self.target, Budget):
            raise ElasticTokError("a budget needs the whole input: use tokenize(), not Tokenizer.run()")
        check_token_count(model, self.target)
        self.options = TokenizeOptions.build(options, **overrides)
        self.window = self.options.resolve_window(model)
        self.on_block, self.curve_sink = on_block, curve_sink
        self.scorer = self.target if isinstance(self.target, Threshold) else MSE_SCORE

    @torch.no_grad()
    def run(self, blocks: Iterable[Tensor], infos: Sequence[MediaInfo], total: int | None = None
            ) -> list[TokenizedVideo]:
        """``blocks`` yields float blocks (B, fpb, 3, H, W) in [-1, 1], one stream per batch row."""
        started = time.perf_counter()
        streams = [_Stream(info) for info in infos]
        coder = _coder(self.model)[0](self.model, len(streams), self.window)
        previous: Tensor | None = None
        bar = tqdm(blocks, total=total, desc="tokenize", unit="block", disable=not self.options.progress)
        for block in bar:
            if block.shape[0] != len(streams):
                raise ElasticTokError(f"got a block of {block.shape[0]} streams for {len(streams)} inputs")
            chosen, trial, scores = self._decide(coder, block.to(module_device(self.model)), previous)
            coder.commit(trial)
            previous = chosen
            for i, stream in enumerate(streams):
                stream.counts.append(int(chosen[i]))
                stream.scores.append(float(scores[i]))
                stream.tokens.append(trial.kept_tokens(i, int(chosen[i])).cpu())
            if self.on_block is not None:
                self.on_block(coder.blocks_done - 1, trial.recon, coder)
            bar.set_postfix(tokens=f"{chosen.float().mean():.0f}/{self.model.config.tokens_per_block}")
        if coder.blocks_done == 0:
            raise ElasticTokError("empty input: no frames to tokenize")
        seconds = time.perf_counter() - started
        weights_hash = self.model.weights_digest()
        return [s.result(self.model, self.scorer.name, coder, seconds, len(streams), weights_hash) for s in streams]

    def _decide(self, coder: BlockCoder, block: Tensor, previous: Tensor | None) -> tuple[Tensor, Trial, Tensor]:
        """Choose each stream's count for this block; return counts, the committed trial and scores."""
        patches = self.model.patchify(block)
        if self.curve_sink is not None:
            c = self.model.config
            curves = error_curves(coder, block, patches, count_grid(c.min_tokens, c.tokens_per_block))
            self.curve_sink.append((head_inputs(coder, block, patches, curves[:, -1]).cpu(), curves))
        if isinstance(self.target, TokenCount) or self.options.search == "regression":
            counts = self._one_pass_counts(coder, block, patches)
            rows = torch.arange(block.shape[0], device=block.device)
            trial = coder.trial(patches, counts.to(block.device), rows)
            return counts, trial, self._scores(trial, block, rows)
        return self._search(coder, block, patches, previous)

    def _one_pass_counts(self, coder: BlockCoder, block: Tensor, patches: Tensor) -> Tensor:
        """Counts without a search: the fixed count, or the length head's prediction, within [Mmin, Mmax]."""
        c = self.model.config
        lo, hi = c.min_tokens, c.tokens_per_block
        if isinstance(self.target, TokenCount):
            return torch.full((patches.shape[0],), self.target.tokens, dtype=torch.long)
        return self.options.length_head.predict(coder, block, patches, self.target).clamp(lo, hi)

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


def _tokenize_tensor(model, batch: Tensor, target: Target, options: TokenizeOptions, sink) -> list[TokenizedVideo]:
    if batch.dim() not in (4, 5):
        raise ElasticTokError(f"expected (B, T, 3, H, W) or (B, 3, H, W), got {tuple(batch.shape)}")
    prepared = [_tensor_blocks(v, model) for v in batch]
    if not prepared:
        raise ElasticTokError("empty input: batch of size 0")
    video = torch.stack([frames for _, frames in prepared])
    fpb = model.config.frames_per_block
    n_blocks = video.shape[1] // fpb
    blocks = (video[:, k * fpb:(k + 1) * fpb] for k in range(n_blocks))
    return Tokenizer(model, target, options, curve_sink=sink).run(blocks, [info for info, _ in prepared], n_blocks)


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


def _tokenize_file(model, path, target: Target, options: TokenizeOptions, sink) -> TokenizedVideo:
    c = model.config
    info, blocks = read_source(model, path, options)
    total = 1 if info.is_image else math.ceil((info.expected_frames or 0) / c.frames_per_block) or None
    return tokenize_blocks(model, info, blocks, target, options, total=total, curve_sink=sink)


def _tokenize_one(model, inputs, target: Target, options: TokenizeOptions, sink=None):
    """A batch tensor (a list of results) or a path (one result), for a per-block target."""
    if isinstance(inputs, Tensor):
        return _tokenize_tensor(model, inputs, target, options, sink)
    return _tokenize_file(model, inputs, target, options, sink)


def _as_batch_item(item):
    """A list item: a single video (T, 3, H, W) or image (3, H, W) gets its batch dimension; paths pass."""
    if not isinstance(item, Tensor):
        return item
    if item.dim() not in (3, 4):
        raise ElasticTokError(f"list items are single videos (T, 3, H, W) or images (3, H, W), got {tuple(item.shape)}")
    return item[None]


def tokenize(model, inputs, target: Target | str, options: TokenizeOptions | None = None, *,
             curve_sink: list[tuple[Tensor, Tensor]] | None = None,
             **overrides) -> TokenizedVideo | list[TokenizedVideo]:
    """Tokenize a batch tensor (B, T, 3, H, W) or (B, 3, H, W), a media file path, or a list of single
    inputs: unbatched videos (T, 3, H, W), images (3, H, W) or paths, of any lengths.

    ``target``: a ``Threshold``, ``TokenCount`` or ``Budget``, or text such as ``"psnr:30"``;
    ``options``: a ``TokenizeOptions``, or its fields as keywords. A batch tensor or a list gives a
    list with one result per input; a single path gives one result. Files are streamed block by
    block; list items are tokenized one after another.
    """
    target, options = as_target(target), TokenizeOptions.build(options, **overrides)
    single = not isinstance(inputs, (list, tuple, Tensor))
    if isinstance(inputs, (list, tuple)) and not inputs:
        raise ElasticTokError("empty input list")
    items = [_as_batch_item(i) for i in inputs] if isinstance(inputs, (list, tuple)) else [inputs]
    results: list[TokenizedVideo] = []
    for item in items:
        if isinstance(target, Budget):
            out = _tokenize_to_budget(model, item, target, options)
        else:
            out = _tokenize_one(model, item, target, options, curve_sink)
        results.extend(out if isinstance(out, list) else [out])
    return results[0] if single else results


def _tokenize_to_budget(model, inputs, target: Budget, options: TokenizeOptions):
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
        result = _tokenize_one(model, inputs, Threshold("mse", math.exp(mid)), options)
        results = result if isinstance(result, list) else [result]
        seconds += results[0].seconds
        total = sum(int(r.counts.sum()) for r in results)
        floor_total = sum(r.n_blocks for r in results) * c.min_tokens
        if total <= target.tokens:
            best, high = result, mid  # fits: try a stricter threshold
        else:
            low = mid
    if best is None:
        raise ElasticTokError(f"a budget of {target.tokens} tokens is below the minimum "
                              f"{floor_total} (Mmin={c.min_tokens} per block)")
    for r in best if isinstance(best, list) else [best]:
        r.seconds = seconds  # what the whole bisection took, not its last round
    return best


# ---- decoding ----------------------------------------------------------------------------------------------
def check_compatible(model, encoded: TokenizedVideo, weights_hash: str | None = None) -> None:
    """Refuse tokens that ``model`` did not make (``weights_hash``: its ``weights_digest()``, if known)."""
    check_is_tokenized(encoded)
    c = model.config
    if encoded.family != model.family:
        raise ElasticTokError(f"these tokens were made by a {encoded.family} model; {c.name!r} is a {model.family} "
                              "model: decode with the model that made them")
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
    frames, n, fpb = encoded.info.frames, encoded.n_blocks, c.frames_per_block
    if not encoded.info.is_image and frames and not (n - 1) * fpb < frames <= n * fpb:
        raise ElasticTokError(f"the tokens say {frames} frames, but {n} blocks of {fpb} frames hold "
                              f"{(n - 1) * fpb + 1} to {n * fpb}")


def iter_decode(model, encoded: TokenizedVideo, window: int | None | str = "model") -> Iterator[Tensor]:
    """Decode block by block with cached context; yields (fpb, 3, H, W) float blocks in [-1, 1]."""
    check_compatible(model, encoded)
    window = TokenizeOptions(window=window).resolve_window(model)
    for blocks in _coder(model)[1](model, [encoded.block_tokens()], window):
        yield blocks[0]


def _restore(video: Tensor, encoded: TokenizedVideo) -> Tensor:
    """Decoded frames (T, 3, H, W) to what was tokenized: padding dropped, an image averaged over its block."""
    if encoded.info.is_image:
        return video.mean(0)
    return torch.cat(list(trim_padding([video], encoded.info.frames)))


def detokenize(model, encoded, window: int | None | str = "model"):
    """Videos (T, 3, H, W) with padding frames removed, or images (3, H, W).

    ``encoded``: a ``TokenizedVideo`` or .etok path (one tensor back), or a list of them (a list
    back; inputs with the same number of blocks are decoded together as one batch).
    """
    single = not isinstance(encoded, (list, tuple))
    items = [read_etok(e) if isinstance(e, (str, os.PathLike)) else e for e in ([encoded] if single else encoded)]
    weights_hash = model.weights_digest()
    for item in items:
        check_compatible(model, item, weights_hash)
    window = TokenizeOptions(window=window).resolve_window(model)
    videos: list[Tensor | None] = [None] * len(items)
    for n_blocks in sorted({item.n_blocks for item in items}):
        group = [i for i, item in enumerate(items) if item.n_blocks == n_blocks]
        blocks = list(_coder(model)[1](model, [items[i].block_tokens() for i in group], window))
        decoded = torch.cat(blocks, dim=1)  # (B, T, 3, H, W)
        for row, i in enumerate(group):
            videos[i] = _restore(decoded[row], items[i])
    return videos[0] if single else videos


def decoded_with_sources(model, encoded: TokenizedVideo, source, options: TokenizeOptions | None = None
                         ) -> Iterator[tuple[Tensor, Tensor]]:
    """(reconstruction (fpb, 3, H, W) in [-1, 1], source block uint8 (fpb, H, W, 3)) per block.

    ``source``: the media path (read afresh) or its blocks as ``read_source`` gives them."""
    options = options or TokenizeOptions()
    blocks = read_source(model, source, options)[1] if isinstance(source, (str, os.PathLike)) else source
    return zip(iter_decode(model, encoded, options.window), blocks)


def score_block(recon: Tensor, source_block: Tensor, metric: str = "mse") -> float:
    """One decoded block (fpb, 3, H, W) in [-1, 1] scored against its uint8 source block (fpb, H, W, 3)."""
    original = to_model(source_block)[None].to(recon.device)
    return float(METRICS[metric][0](recon[None], original))


def source_scores(model, encoded: TokenizedVideo, source, options: TokenizeOptions | None = None,
                  metrics: Sequence[str] = ("mse",)) -> dict[str, list[float]]:
    """Per-block scores of the decoded tokens against ``source`` (read again), for each named metric."""
    values: dict[str, list[float]] = {name: [] for name in metrics}
    with torch.no_grad():
        for recon, block in decoded_with_sources(model, encoded, source, options):
            for name in metrics:
                values[name].append(score_block(recon, block, name))
    return values


def achieved_mse(model, encoded: TokenizedVideo, source, options: TokenizeOptions | None = None) -> float:
    """Mean per-block MSE of the reconstruction: the stored scores when they are MSE, else decoded again."""
    if encoded.metric == "mse":
        return encoded.scores.mean().item()
    errors = source_scores(model, encoded, source, options)["mse"]
    return sum(errors) / len(errors)


provide_tokenization(tokenize, detokenize)
