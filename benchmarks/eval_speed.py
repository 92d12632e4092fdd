"""How long a full ``elastictok eval`` takes: the model at 5 thresholds, 2 fixed-length baselines, the codec anchors.

    python benchmarks/eval_speed.py --blocks 100 --threads 2        # the target: under 3 minutes on 2 cores
    python benchmarks/eval_speed.py --blocks 10 --threads 1         # a quick look

The input is the bundled street clip (20 blocks), repeated into one video of ``--blocks`` blocks; the
models are the bundled default and two of the shipped baselines (``baselines/``). ``--threads`` is what
torch may use in all; ``--workers`` processes (default: one per thread, 1 = all in this process) share it
(``EvalRun.workers``). Prints the wall-clock time of the whole, its CPU time (this process and its
workers: on a machine shared with other work, the wall clock alone says little) and the wall-clock and
CPU seconds of each part (fixed lengths, codecs, thresholds), summed over the processes that ran it.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import torch

from elastictok import from_pretrained
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


class PassSeconds(logging.Handler):
    """Adds up the wall-clock and CPU seconds of each kind of pass that eval logs (``evaluation.passes.run_pass``),
    its workers' included."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.seconds: dict[str, list[float]] = {}
        self.per_process: dict[int, float] = {}  # CPU seconds of passes, per process that ran them

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "eval_pass"):
            total = self.seconds.setdefault(record.eval_pass, [0.0, 0.0])
            total[0] += record.seconds
            total[1] += record.cpu_seconds
            self.per_process[record.process] = self.per_process.get(record.process, 0.0) + record.cpu_seconds


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (eval's workers)."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, help="processes measuring side by side (default: --threads)")
    args = parser.parse_args()
    workers = args.workers or args.threads
    torch.set_num_threads(args.threads)
    model = from_pretrained("default").eval()
    baselines = [from_pretrained(path).eval() for path in BASELINES]
    passes = PassSeconds()
    logger = logging.getLogger("elastictok.evaluation.passes")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(passes)
    with tempfile.TemporaryDirectory() as folder:
        clip = long_clip(args.blocks, Path(folder))
        started, cpu = time.perf_counter(), cpu_seconds()
        report = evaluate_models(model, baselines, [clip], None, EvalRun(progress=False, workers=workers),
                                 baseline_names=[p.name for p in BASELINES])
        total, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    print(f"{report['blocks']} blocks, {len(report['thresholds'])} thresholds, {len(baselines)} baselines, "
          f"{args.threads} threads, {workers} workers: {total:.1f} s in all ({cpu:.1f} s of CPU time)")
    print("  summed over processes: " + "; ".join(f"{name} {wall:.1f} s ({cpu:.1f} s of CPU time)"
                                                  for name, (wall, cpu) in passes.seconds.items()))
    if len(passes.per_process) > 1:  # one thread each: what each would take on a core of its own, start-up aside
        print("  CPU seconds of passes per worker: " + ", ".join(f"{s:.1f}" for s in passes.per_process.values()))


if __name__ == "__main__":
    main()
