"""Whole files in and out: a media file to an .etok file with a summary, and an .etok file back to media."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..errors import ElasticTokError
from ..media.io import VideoWriter, write_image
from ..media.transforms import from_model
from ..metrics.quality import psnr_from_mse
from ..utils.blocks import trim_padding
from ..utils.fileio import check_output_dir, check_output_file
from .options import TokenizeOptions
from .targets import Target
from .tokenfile import TokenizedVideo, read_etok, write_etok
from .scoring import achieved_mse
from .tokenizer import SIZES, at_source_size, check_compatible, detokenize, iter_decode, tokenize
from .workers import TokenizerPool


def output_names(inputs: Sequence[str | Path]) -> list[str]:
    """``<stem>.etok`` per input; inputs whose stems collide keep their suffix (a.mp4.etok, a.png.etok),
    and names that still collide get the first of -1, -2 ... that no other output has."""
    stems = Counter(Path(i).stem for i in inputs)
    names = [Path(i).stem if stems[Path(i).stem] == 1 else Path(i).name for i in inputs]
    repeated = Counter(names)
    taken = {name for name in names if repeated[name] == 1}
    unique = []
    for name in names:
        if repeated[name] > 1:
            name = next(f"{name}-{k}" for k in itertools.count(1) if f"{name}-{k}" not in taken)
        taken.add(name)
        unique.append(name)
    return [name + ".etok" for name in unique]


def encode_files(model, inputs: Sequence[str | Path], out_dir: str | Path, target: Target | str,
                 options: TokenizeOptions | None = None, each: Callable[[dict], None] | None = None,
                 workers: int = 1, bf16: bool = False) -> list[dict]:
    """Encode every input into ``out_dir`` (made only when something is written), each whole or not at all.

    A failed input does not stop the others; afterwards one ElasticTokError names every failed input.
    ``each(summary)`` is called as each input is written. With ``workers`` > 1 the inputs are
    tokenized by that many processes sharing the cores (``workers.TokenizerPool``; ``bf16`` is
    their autocast) and written here, in input order.
    """
    check_output_dir(out_dir)
    failed: list[str] = []
    summaries: list[dict] = []
    # closed here, not whenever the collector gets to it: a worker pool shut down at exit prints a traceback
    with contextlib.closing(tokenize_each(model, inputs, target, options, workers, bf16)) as tokenized:
        for source, name, encoded in zip(inputs, output_names(inputs), tokenized):
            try:
                if isinstance(encoded, ElasticTokError):
                    raise encoded
                summary = write_encoded(model, encoded, source, out_dir, options, name=name)
            except ElasticTokError as exc:
                if len(inputs) == 1:
                    raise
                message = str(exc)
                failed.append(message if str(source) in message else f"{source}: {message}")
                continue
            summaries.append(summary)
            if each is not None:
                each(summary)
    if failed:
        others = ", the others were written" if len(failed) < len(inputs) else ""
        raise ElasticTokError(f"{len(failed)} of {len(inputs)} inputs failed{others}: " + "; ".join(failed))
    return summaries


def tokenize_each(model, inputs: Sequence[str | Path], target: Target | str, options: TokenizeOptions | None = None,
                  workers: int = 1, bf16: bool = False) -> Iterator[TokenizedVideo | ElasticTokError]:
    """Per input, in order: its tokens, or the error that refused it.

    One worker runs here, under the caller's threads, autocast and model (the pool's one-worker
    mode would set them itself). Several get an equal share of the cores each, no progress bars (they
    would interleave), and this process keeps one thread for what it does meanwhile (writing files,
    decoding again to report the MSE of a non-MSE target).
    """
    if workers == 1:
        for source in inputs:
            try:
                yield tokenize(model, source, target, options)
            except ElasticTokError as exc:
                yield exc
        return
    if next(model.parameters()).device.type != "cpu":
        raise ElasticTokError("--workers shares the CPU cores; on a GPU run one process")
    options = TokenizeOptions.build(options, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with TokenizerPool(model, min(workers, len(inputs)), bf16=bf16, target=target, options=options) as pool:
            yield from pool.map(inputs)
    finally:
        torch.set_num_threads(threads)


def write_encoded(model, encoded: TokenizedVideo, source, out_dir: str | Path,
                  options: TokenizeOptions | None = None, name: str | None = None) -> dict:
    """Write the tokens of ``source`` to ``out_dir/<name>`` (default ``<stem>.etok``) and return the summary
    ``elastictok encode --json`` prints. Nothing is written unless the whole summary could be made."""
    started = time.perf_counter()
    destination = Path(out_dir) / (name or Path(source).stem + ".etok")
    counts = encoded.counts.tolist()
    mse = achieved_mse(model, encoded, source, options)
    write_etok(destination, encoded, model.codebook_size)
    seconds = time.perf_counter() - started
    return {
        "input": str(source), "output": str(destination), "blocks": encoded.n_blocks,
        "tokens_per_block": counts, "max_tokens_per_block": encoded.max_tokens,
        "mean_tokens_per_block": sum(counts) / len(counts), "total_tokens": sum(counts),
        "mse": mse, "psnr": float(psnr_from_mse(torch.tensor(mse))),
        "metric": encoded.metric, "scores": encoded.scores.tolist(), "target": encoded.target,
        "met": encoded.met.tolist(), "blocks_met": encoded.blocks_met, "passes": encoded.passes,
        "encoder_passes": encoded.encoder_passes, "seconds": round(encoded.seconds + seconds, 3),
        "sampler": None if encoded.sampler is None else encoded.sampler.to_dict(),
    }


def decode_file(model, tokens: str | Path | TokenizedVideo, output: str | Path,
                window: int | None | str = "model", size: str = "model", **sampler: int | float | None) -> Path:
    """Decode an .etok file to an image (.png/.jpg/.webp) or a video (.mp4), streaming video blocks;
    ``size``: ``"model"`` (the model's frame size) or ``"source"`` (the source's, the fit undone);
    ``sampler``: ``steps``, ``guidance``, ``seed`` over the sampler the tokens record."""
    if size not in SIZES:
        raise ElasticTokError(f"size must be 'model' or 'source', got {size!r}")
    output = Path(output)
    check_output_file(output)
    encoded = tokens if isinstance(tokens, TokenizedVideo) else read_etok(tokens)
    check_compatible(model, encoded)
    model.sampler(encoded.sampler, **sampler)  # settings it refuses are refused before any output is opened
    if encoded.info.is_image:
        write_image(output, from_model(detokenize(model, encoded, window, size, **sampler)))
        return output
    if output.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        raise ElasticTokError(f"{output}: these tokens hold a video; write .mp4")
    with VideoWriter(output, encoded.info.fps or 24) as writer:
        blocks = iter_decode(model, encoded, window, **sampler)
        if size == "source":
            blocks = (at_source_size(b, encoded) for b in blocks)
        for frames in trim_padding((from_model(b) for b in blocks), encoded.info.frames):
            writer.write(frames)
    return output
