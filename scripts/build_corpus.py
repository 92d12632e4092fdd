"""Assemble a small corpus of real images and videos from offline sources.

Sources (all installable without a network beyond the package registries):
  * Debian's opencv-doc examples (vtest.avi, tree.avi, Megamind.avi, ~100 photos), BSD-licensed;
  * scikit-image's bundled photos (skimage.data), public domain / CC0 as listed in skimage;
  * scikit-learn's sample images (china.jpg, flower.jpg), CC-BY.

Writes DST/train and DST/heldout. Held-out files are never seen in training: whole files, and the
last VTEST_HELDOUT_FRAMES frames of vtest.avi (its first frames train; the camera is static, so the
tail is the same street with other pedestrians). With --shards, also packs DST/train into
WebDataset shards in DST/shards.

    python scripts/build_corpus.py data/corpus [--shards]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HELDOUT = {"tree.avi", "Megamind.avi", "butterfly.jpg", "messi5.jpg", "building.jpg", "home.jpg", "baboon.jpg",
           "skimage_chelsea.png", "sklearn_china.jpg"}
SKIP = {"Megamind_bugy.avi"}  # a re-encode of Megamind.avi: would leak between splits
MIN_SIDE = 64
VTEST_HELDOUT_FRAMES = 195  # of 795 (10 fps): the last 19.5 seconds


def split_vtest(path: Path, train: Path, heldout: Path) -> None:
    """vtest.avi's head to train/vtest_head.mp4 and its tail to heldout/vtest_tail.mp4 (H.264, crf 12)."""
    from elastictok.media.io import VideoReader, write_video

    frames = VideoReader(path).read_all()
    cut = len(frames) - VTEST_HELDOUT_FRAMES
    write_video(train / "vtest_head.mp4", frames[:cut], fps=10, crf=12)
    write_video(heldout / "vtest_tail.mp4", frames[cut:], fps=10, crf=12)


def opencv_examples(workdir: Path) -> Path:
    """The opencv-doc example data folder, unpacked from Debian's package without installing it."""
    system = Path("/usr/share/doc/opencv-doc/examples/data")
    if system.is_dir():
        return system
    subprocess.run(["apt-get", "download", "opencv-doc"], cwd=workdir, check=True, capture_output=True)
    deb = next(workdir.glob("opencv-doc_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(workdir / "x")], check=True)
    return workdir / "x/usr/share/doc/opencv-doc/examples/data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--shards", action="store_true", help="also write WebDataset shards of the training split")
    args = parser.parse_args()
    from PIL import Image

    train, heldout = args.dst / "train", args.dst / "heldout"
    for d in (train, heldout):
        d.mkdir(parents=True, exist_ok=True)

    def place(name: str) -> Path:
        return (heldout if name in HELDOUT else train) / name

    with tempfile.TemporaryDirectory() as tmp:
        source = opencv_examples(Path(tmp))
        for path in sorted(source.iterdir()):
            if path.name in SKIP or path.suffix.lower() not in {".jpg", ".png", ".avi"}:
                continue
            if path.name == "vtest.avi":
                split_vtest(path, train, heldout)
                continue
            if path.suffix != ".avi":
                with Image.open(path) as im:
                    if min(im.size) < MIN_SIDE:
                        continue
            shutil.copy(path, place(path.name))

    try:
        import skimage.data as sk
        for name in ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina",
                     "immunohistochemistry", "motorcycle_left" if hasattr(sk, "motorcycle_left") else "cat"]:
            try:
                image = getattr(sk, name)()
            except Exception:  # loaders that need a network fail here
                continue
            Image.fromarray(image).convert("RGB").save(place(f"skimage_{name}.png"))
    except ImportError:
        print("scikit-image not installed: skipping its photos", file=sys.stderr)
    try:
        from sklearn.datasets import load_sample_images
        bunch = load_sample_images()
        for filename, image in zip(bunch.filenames, bunch.images):
            Image.fromarray(image).save(place(f"sklearn_{Path(filename).name}"))
    except ImportError:
        print("scikit-learn not installed: skipping its photos", file=sys.stderr)

    for split in (train, heldout):
        files = sorted(split.iterdir())
        videos = [f for f in files if f.suffix in (".avi", ".mp4")]
        print(f"{split}: {len(files) - len(videos)} images, {len(videos)} videos")
    if args.shards:
        from elastictok.training.shards import build_shards
        summary = build_shards([train], args.dst / "shards", shard_size=50, clip_frames=32, short_side=256)
        print(f"{args.dst / 'shards'}: {summary.shards} shards, {summary.clips} clips, {summary.images} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
