"""Shrink a corpus and gather the wheels a lent GPU machine lacks, so that a device call can train.

    python scripts/pack_for_device.py [--corpus data/corpus2] [--out .device]

A device call carries at most 64 MiB of working tree, and that machine has no PyAV or WebDataset
and no network. This writes ``OUT/corpus/{train,heldout}`` (every video re-encoded as H.264 at the
short side the default preset's training reads, 128, and evaluation reads, 64; photos as JPEG at 128;
held-out video at near-lossless crf 12, so that PSNR is measured against what the CPU runs see,
training video at crf 20) and ``OUT/wheels`` (PyAV, WebDataset and braceexpand for the device's
Python 3.12). It prints the total size. ``scripts/device_train.py`` is what uses it (docs/training.md,
"On a lent GPU").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from elastictok.media.io import VideoReader, VideoWriter, is_video, list_media, read_image
from elastictok.media.transforms import resize_short_side

WHEELS = ["av==19.0.2", "webdataset==1.0.2", "braceexpand==0.1.7"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# split: (short side, H.264 crf); MediaCollection.load reads training media at 2x and held-out at 1x 64x64
SPLITS = {"train": (128, 20), "heldout": (64, 12)}


def even_short_side(frames: torch.Tensor, short_side: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 at ``short_side`` (never enlarged), cropped to even sizes for yuv420p."""
    if min(frames.shape[1:3]) > short_side:
        frames = resize_short_side(frames, short_side)
    return frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]


def shrink_video(src: Path, dst: Path, short_side: int, crf: int) -> None:
    reader = VideoReader(src)
    with VideoWriter(dst, reader.fps, crf=crf) as writer:
        chunk: list[torch.Tensor] = []
        for frame in reader:
            chunk.append(frame)
            if len(chunk) == 32:
                writer.write(even_short_side(torch.stack(chunk), short_side))
                chunk = []
        if chunk:
            writer.write(even_short_side(torch.stack(chunk), short_side))


def shrink_image(src: Path, dst: Path, short_side: int) -> None:
    image = even_short_side(read_image(src)[None], short_side)[0]
    Image.fromarray(image.numpy()).save(dst, format="JPEG", quality=92)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus2"))
    parser.add_argument("--out", type=Path, default=Path(".device"))
    args = parser.parse_args()

    for split, (short_side, crf) in SPLITS.items():
        folder = args.out / "corpus" / split
        folder.mkdir(parents=True, exist_ok=True)
        for src in list_media([args.corpus / split]):
            if is_video(src):
                shrink_video(src, folder / f"{src.stem}.mp4", short_side, crf)
            else:
                shrink_image(src, folder / f"{src.stem}.jpg", short_side)
    wheels = args.out / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *(f"--platform={p}" for p in PLATFORMS), "-d", str(wheels), *WHEELS], check=True)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB (corpus and wheels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
