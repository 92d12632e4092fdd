"""Training throughput (frames/s) of the CPU presets, bf16 autocast against fp32, in one run.

    python benchmarks/train_throughput.py [--presets tiny small] [--repeats 3]

Variants are interleaved and repeated so that a noisy shared machine affects them alike; the
table reports the median and the bf16/fp32 ratio, which is the number to compare across machines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from elastictok import ElasticTok, ElasticTokConfig


def step_seconds(model: ElasticTok, optimizer, video: torch.Tensor, bf16: bool, steps: int) -> float:
    c = model.config
    generator = torch.Generator().manual_seed(0)
    keep = torch.randint(c.min_tokens, c.tokens_per_block + 1, (video.shape[0], video.shape[1] // c.frames_per_block),
                         generator=generator)
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(video, keep).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch_size} clips x {args.blocks} blocks")
    print(f"{'preset':<8} {'params':>8} {'tokens/step':>11} {'fp32 frames/s':>14} {'bf16 frames/s':>14} "
          f"{'bf16/fp32':>9}")
    for preset in args.presets:
        config = ElasticTokConfig.from_preset(preset)
        torch.manual_seed(0)
        model = ElasticTok(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        frames = args.blocks * config.frames_per_block
        video = torch.rand(args.batch_size, frames, 3, *config.resolution) * 2 - 1
        timings = {False: [], True: []}
        step_seconds(model, optimizer, video, True, 1)  # warm-up
        step_seconds(model, optimizer, video, False, 1)
        for _ in range(args.repeats):
            for bf16 in (False, True):
                timings[bf16].append(step_seconds(model, optimizer, video, bf16, args.steps))
        fps = {k: args.batch_size * frames / statistics.median(v) for k, v in timings.items()}
        params = sum(p.numel() for p in model.parameters()) / 1e6
        tokens = args.batch_size * args.blocks * config.tokens_per_block
        print(f"{preset:<8} {params:>7.1f}M {tokens:>11} {fps[False]:>14.1f} {fps[True]:>14.1f} "
              f"{fps[True] / fps[False]:>9.2f}")


if __name__ == "__main__":
    main()
