"""Does decoding keep up with training? Loader frames/s (workers 0, 1, 2) against training frames/s.

    python benchmarks/loader_throughput.py --shards DIR [--folder DIR]

Build shards first, e.g. `python scripts/build_corpus.py data/corpus --shards`. Loader rates are
frames of finished training batches (crops and all) per second; training rates are one
optimiser step of the preset on the same batch shape, bf16 and fp32.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import step_seconds  # noqa: E402

from elastictok import ElasticTok, ElasticTokConfig  # noqa: E402
from elastictok.training.datasets import MediaCollection, TrainBatches  # noqa: E402
from elastictok.training.shards import ShardBatches, list_shards  # noqa: E402


def loader_fps(dataset, workers: int, batches: int, sampler=None) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, sampler=sampler)
    iterator = iter(loader)
    next(iterator)  # start-up (worker spawn, first shard) is not throughput
    started, frames = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(iterator)
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch  # shards also report skipped samples
        frames += batch.shape[0] * batch.shape[1]
    return frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="data/corpus/shards")
    parser.add_argument("--folder", default=None, help="also time the in-memory folder loader on this folder")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    shards = list_shards([args.shards])
    print(f"{torch.get_num_threads()} threads; batch {args.batch_size} clips x {args.blocks} blocks")
    print(f"{'preset':<7} {'source':<14} {'workers':>7} {'loader fr/s':>11} {'train fp32':>10} {'train bf16':>10} "
          f"{'loader/train':>12}")
    for preset in args.presets:
        c = ElasticTokConfig.from_preset(preset)
        model = ElasticTok(c).train()
        optimizer = torch.optim.AdamW(model.parameters())
        video = torch.rand(args.batch_size, args.blocks * c.frames_per_block, 3, *c.resolution) * 2 - 1
        frames = video.shape[0] * video.shape[1]
        train = {bf16: frames / step_seconds(model, optimizer, video, bf16, 2) for bf16 in (False, True)}
        sources = {}
        if shards:
            sources["shards"] = lambda: (ShardBatches(shards, c.resolution, c.frames_per_block, args.blocks,
                                                      args.batch_size, 0.5, seed=0, buffer_size=64), None)
        if args.folder:
            media = MediaCollection.load([args.folder], short_side=2 * min(c.resolution))
            sources["folder (RAM)"] = lambda: (TrainBatches(media, c.resolution, c.frames_per_block, args.blocks,
                                                            args.batch_size, 0.5, 0, 10**6), range(10**6))
        for name, make in sources.items():
            for workers in (0, 1, 2):
                dataset, sampler = make()
                rate = loader_fps(dataset, workers, args.batches, sampler)
                print(f"{preset:<7} {name:<14} {workers:>7} {rate:>11.1f} {train[False]:>10.1f} {train[True]:>10.1f} "
                      f"{rate / max(train.values()):>12.1f}")


if __name__ == "__main__":
    main()
