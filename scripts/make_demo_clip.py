"""Make the demo clip bundled with the package, src/elastictok/assets/street.mp4.

80 frames (8 s at 10 fps) of OpenCV's samples/data/vtest.avi, from the part that
scripts/build_corpus.py holds out of training: a 384x384 window of the street, scaled to 128x128,
H.264. vtest.avi ships with OpenCV under Apache-2.0 / BSD-3-Clause (Debian's opencv-doc copyright
file, "Files: *"); the licence is noted beside the clip.

    python scripts/make_demo_clip.py [--out src/elastictok/assets/street.mp4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from build_corpus import VTEST_HELDOUT_FRAMES, opencv_examples
from elastictok.media.io import VideoReader, write_video
from elastictok.media.transforms import fit_to_resolution

FRAMES = 80
WINDOW = (100, 300, 384)  # top, left, side of the square window, in vtest.avi's 768x576 frames
SIZE = (128, 128)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "src/elastictok/assets/street.mp4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        frames = VideoReader(opencv_examples(Path(tmp)) / "vtest.avi").read_all()
    first = len(frames) - VTEST_HELDOUT_FRAMES
    top, left, side = WINDOW
    clip = frames[first:first + FRAMES, top:top + side, left:left + side]
    write_video(args.out, fit_to_resolution(clip, SIZE), fps=10, crf=20)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {FRAMES} frames of {SIZE[1]}x{SIZE[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
