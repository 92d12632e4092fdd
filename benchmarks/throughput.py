"""Blocks per second tokenizing a folder with 1, 2 and N worker processes (N = the cores).

    python benchmarks/throughput.py [--folder DIR] [--copies 4] [--workers 1 2 4] [--threshold mse:0.03]

Each worker gets cores // workers torch threads (``elastictok.utils.cores.threads_per_worker``), so
the total never exceeds the cores. Without --folder, the bundled clip is copied ``--copies`` times
into a temporary folder. Start-up (spawning workers, loading the model) is reported apart from the
tokenizing time that the rate is computed from.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from elastictok.media.io import list_media
from elastictok.models.pretrained import sample_video
from elastictok.tokenization.targets import parse_target
from elastictok.tokenization.workers import TokenizerPool
from elastictok.utils.cores import available_cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--folder", help="images and videos to tokenize (default: copies of the bundled clip)")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", help="default: 1 2 and the number of cores")
    parser.add_argument("--threshold", default="mse:0.03")
    parser.add_argument("--search", default="binary")
    args = parser.parse_args()
    cores = available_cores()
    counts = args.workers or sorted({1, 2, cores})
    with tempfile.TemporaryDirectory() as scratch:
        if args.folder:
            files = list_media([args.folder])
        else:
            files = [shutil.copy(sample_video(), Path(scratch) / f"clip{i}.mp4") for i in range(args.copies)]
        target = parse_target(args.threshold)
        print(f"{len(files)} files, model {args.model}, target {args.threshold}, search {args.search}, {cores} cores")
        print(f"{'workers':>7} {'threads each':>12} {'start-up s':>10} {'blocks':>7} {'seconds':>8} {'blocks/s':>9}")
        for workers in counts:
            started = time.perf_counter()
            with TokenizerPool(args.model, workers, target=target, search=args.search) as pool:
                ready = time.perf_counter()
                results = list(pool.map(files))
                done = time.perf_counter()
            blocks = sum(r.n_blocks for r in results if not isinstance(r, Exception))
            print(f"{pool.workers:>7} {pool.threads:>12} {ready - started:>10.2f} {blocks:>7} {done - ready:>8.2f} "
                  f"{blocks / (done - ready):>9.2f}")


if __name__ == "__main__":
    main()
