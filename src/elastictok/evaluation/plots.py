"""Pictures a person would rather look at than read: side-by-side videos and token plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from ..errors import ElasticTokError  # noqa: E402
from ..media.io import VideoWriter, is_video, write_image  # noqa: E402
from ..media.transforms import display_scale, from_model, upscale  # noqa: E402
from ..metrics.quality import psnr_from_mse  # noqa: E402
from ..tokenization.options import TokenizeOptions  # noqa: E402
from ..tokenization.targets import Target  # noqa: E402
from ..tokenization.tokenfile import TokenizedVideo  # noqa: E402
from ..tokenization.scoring import scored_blocks  # noqa: E402
from ..tokenization.tokenizer import tokenize  # noqa: E402
from ..utils.blocks import trim_padding  # noqa: E402
from ..utils.fileio import atomic_path, check_output_file  # noqa: E402


def label_frames(frames: torch.Tensor, text: str, scale: int) -> torch.Tensor:
    """Upscale uint8 (T, H, W, 3) by an integer factor (nearest) and write ``text`` in the top-left corner."""
    big = upscale(frames, scale)
    out = []
    for frame in big:
        image = Image.fromarray(frame.numpy())
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((4, 4), text)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((4, 4), text, fill=(255, 255, 255))
        out.append(torch.from_numpy(np.array(image)))
    return torch.stack(out)


def save_png(fig: plt.Figure, path: str | Path) -> None:
    """Save and close ``fig``."""
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def tokens_figure(encodings: dict[str, TokenizedVideo], title: str = "") -> plt.Figure:
    """Tokens per block over time, one line per labelled encoding, with Mmax for reference."""
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=120)
    for label, encoded in encodings.items():
        fps, fpb = encoded.info.fps, None
        x = np.arange(encoded.n_blocks)
        if fps and encoded.n_blocks > 1 and encoded.info.frames:
            fpb = encoded.info.frames / encoded.n_blocks
            x = x * fpb / fps
        ax.step(x, encoded.counts.numpy(), where="post", label=label)
        ax.axhline(encoded.max_tokens, color="grey", linestyle=":", linewidth=1)
    first = next(iter(encodings.values()))
    ax.set_xlabel("seconds" if first.info.fps and first.n_blocks > 1 else "block")
    ax.set_ylabel("tokens per block")
    ax.set_ylim(0, first.max_tokens * 1.05)
    ax.set_title(title or "tokens per block (dotted: all tokens)")
    if len(encodings) > 1:
        ax.legend()
    fig.tight_layout()
    return fig


def reconstruct_side_by_side(model, source: str, output: str | Path, target: Target,
                             options: TokenizeOptions | None = None, **overrides) -> str:
    """Tokenize ``source``; write original | reconstruction with per-block counts, and a token plot."""
    _check_output(source, Path(output))
    options = TokenizeOptions.build(options, **overrides)
    encoded = tokenize(model, source, target, options)
    return write_side_by_side(model, encoded, source, output, options)


def _check_output(source: str, output: Path) -> None:
    """Both outputs (OUT and OUT_tokens.png) writable, of the input's kind, and not the input itself."""
    check_output_file(output, source)
    try:
        check_output_file(_plot_path(output), source)
    except ElasticTokError as exc:
        raise ElasticTokError(f"{exc} (the token plot written beside -o {output})") from None
    if is_video(Path(source)) and output.suffix.lower() not in (".mp4", ".mkv", ".mov"):
        raise ElasticTokError(f"{output}: the input is a video; write .mp4")
    if not is_video(Path(source)) and output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise ElasticTokError(f"{output}: the input is an image; write .png or .jpg")


def _plot_path(output: Path) -> Path:
    return output.with_name(output.stem + "_tokens.png")


def write_side_by_side(model, encoded: TokenizedVideo, source: str, output: str | Path,
                       options: TokenizeOptions | None = None) -> str:
    """Write original | reconstruction of tokens already made from ``source``, and a token plot."""
    output = Path(output)
    _check_output(source, output)
    c = model.config
    scale = display_scale(c.resolution)
    plot_path = _plot_path(output)
    errors = []

    def side_by_side():
        for k, (recon, block, scores) in enumerate(scored_blocks(model, encoded, source, options, ("mse",))):
            errors.append(scores["mse"])
            n = int(encoded.counts[k])
            left = label_frames(block, "original", scale)
            right = label_frames(from_model(recon), f"block {k}: {n}/{c.tokens_per_block} tokens", scale)
            yield torch.cat([left, right], dim=2)

    pairs = lambda: trim_padding(side_by_side(), 1 if encoded.info.is_image else encoded.info.frames)  # noqa: E731
    written = False
    try:
        with atomic_path(plot_path) as plot_tmp:  # the plot is renamed into place once the side-by-side is written
            save_png(tokens_figure({Path(source).name: encoded}), plot_tmp)  # an error names plot_path
            if encoded.info.is_image:
                write_image(output, next(pairs())[0])
            else:
                with VideoWriter(output, encoded.info.fps or 24) as writer:
                    for frames in pairs():
                        writer.write(frames)
            written = True
    except BaseException:  # e.g. Ctrl-C between the two renames: the pair is whole or absent
        if written:
            output.unlink(missing_ok=True)
        raise
    mean = encoded.counts.float().mean().item()
    psnr = psnr_from_mse(torch.tensor(errors).mean()).item()
    return (f"{source}: {encoded.n_blocks} blocks, {mean:.1f}/{c.tokens_per_block} tokens per block "
            f"({100 * mean / c.tokens_per_block:.0f}%), PSNR {psnr:.2f} dB -> {output}, {plot_path}")
