"""Whole files in and out: a media file to an .etok file with a summary, and an .etok file back to media."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import ElasticTokError
from ..media.io import VideoWriter, write_image
from ..media.transforms import from_model
from ..metrics.quality import psnr_from_mse
from ..utils.blocks import trim_padding
from .options import TokenizeOptions
from .targets import Target
from .tokenfile import TokenizedVideo, read_etok, write_etok
from .tokenizer import achieved_mse, detokenize, iter_decode


def encode_file(model, source, out_dir: str | Path, target: Target | str,
                options: TokenizeOptions | None = None) -> dict:
    """Tokenize ``source`` into ``out_dir/<stem>.etok``; returns the summary ``elastictok encode --json`` prints."""
    started = time.perf_counter()
    encoded = model.tokenize(source, target, options)
    destination = Path(out_dir) / (Path(source).stem + ".etok")
    write_etok(destination, encoded, model.codebook_size)
    seconds = time.perf_counter() - started
    counts = encoded.counts.tolist()
    mse = achieved_mse(model, encoded, source, options)
    return {
        "input": str(source), "output": str(destination), "blocks": encoded.n_blocks,
        "tokens_per_block": counts, "max_tokens_per_block": encoded.max_tokens,
        "mean_tokens_per_block": sum(counts) / len(counts), "total_tokens": sum(counts),
        "mse": mse, "psnr": float(psnr_from_mse(torch.tensor(mse))),
        "metric": encoded.metric, "scores": encoded.scores.tolist(), "passes": encoded.passes,
        "seconds": round(seconds, 3),
    }


def decode_file(model, tokens: str | Path | TokenizedVideo, output: str | Path,
                window: int | None | str = "model") -> Path:
    """Decode an .etok file to an image (.png/.jpg/.webp) or a video (.mp4), streaming video blocks."""
    encoded = tokens if isinstance(tokens, TokenizedVideo) else read_etok(tokens)
    output = Path(output)
    if encoded.info.is_image:
        write_image(output, from_model(detokenize(model, encoded, window)))
        return output
    if output.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        raise ElasticTokError(f"{output}: these tokens hold a video; write .mp4")
    with VideoWriter(output, encoded.info.fps or 24) as writer:
        for frames in trim_padding((from_model(b) for b in iter_decode(model, encoded, window)), encoded.info.frames):
            writer.write(frames)
    return output
