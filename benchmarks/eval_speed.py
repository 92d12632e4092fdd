"""How long a full ``elastictok eval`` takes: the model at 5 thresholds, 2 fixed-length baselines, the codec anchors.

    python benchmarks/eval_speed.py --blocks 100 --threads 2        # the target: under 3 minutes on 2 cores
    python benchmarks/eval_speed.py --blocks 10 --threads 1         # a quick look

The input is the bundled street clip (20 blocks), repeated into one video of ``--blocks`` blocks; the
models are the bundled default and two of the shipped baselines (``baselines/``). Prints the
wall-clock time of each part (fixed lengths, codecs, thresholds) and of the whole, and the CPU time
of the whole (on a machine shared with other work, the wall clock alone says little).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from elastictok import from_pretrained
from elastictok.evaluation import measurement
from elastictok.evaluation.measurement import EvalRun, evaluate_models
from elastictok.media.io import VideoReader, write_video
from elastictok.models.pretrained import sample_video

ROOT = Path(__file__).resolve().parent.parent
BASELINES = [ROOT / "baselines" / "default-fixed-0.25", ROOT / "baselines" / "default-fixed-0.5"]


def long_clip(blocks: int, folder: Path) -> str:
    """The street clip looped to ``blocks`` blocks of the default model (4 frames each), at 64x64."""
    frames = VideoReader(sample_video()).read_all()
    frames = frames.repeat((-(-4 * blocks // len(frames)), 1, 1, 1))[:4 * blocks]
    path = folder / "clip.mp4"
    write_video(path, frames, fps=24)
    return str(path)


def timed(name: str, clock: dict):
    """Wrap ``measurement.<name>`` to add its wall-clock seconds to ``clock[name]``."""
    inner = getattr(measurement, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            clock[name] = clock.get(name, 0.0) + time.perf_counter() - started

    setattr(measurement, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = from_pretrained("default").eval()
    baselines = [from_pretrained(path).eval() for path in BASELINES]
    clock: dict[str, float] = {}
    for name in ("codec_points", "_adaptive"):
        timed(name, clock)
    with tempfile.TemporaryDirectory() as folder:
        clip = long_clip(args.blocks, Path(folder))
        started, cpu = time.perf_counter(), time.process_time()
        report = evaluate_models(model, baselines, [clip], None, EvalRun(progress=False),
                                 baseline_names=[p.name for p in BASELINES])
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"{report['blocks']} blocks, {len(report['thresholds'])} thresholds, {len(baselines)} baselines, "
          f"{args.threads} threads: {total:.1f} s in all ({cpu:.1f} s of CPU time)")
    print(f"  fixed lengths {total - clock['codec_points'] - clock['_adaptive']:.1f} s; codec anchors "
          f"{clock['codec_points']:.1f} s; thresholds {clock['_adaptive']:.1f} s")


if __name__ == "__main__":
    main()
