"""Adaptive search cost on one clip and model: passes, wall time and decisions, plus memory vs length.

    python benchmarks/search.py --model runs/tiny/model --input data/corpus/heldout/tree.avi \
        --threshold mse:0.06 [--length-head head.safetensors]

Rows: fixed length (one encode+decode per block, the floor), plain bisection (the original's
strategy), warm-started bisection (our default), K-ary batched search, full search (the exact
reference) and the regression head. "passes" are forward calls, "evals" candidate counts scored
per block; "agree" is the share of blocks whose count equals full search's. Then peak memory
while tokenizing ever longer streams (the clip looped) with a fixed context window.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from elastictok import ElasticTok
from elastictok.media.blocks import iter_media_blocks
from elastictok.media.transforms import to_model
from elastictok.tokenization.length_head import LengthHead
from elastictok.tokenization.targets import TokenCount, parse_target
from elastictok.tokenization.tokenizer import Tokenizer


def load_blocks(model, path: str) -> tuple[list[torch.Tensor], object]:
    c = model.config
    info, blocks = iter_media_blocks(path, c.resolution, c.frames_per_block)
    return [to_model(b)[None] for b in blocks], info


def run(model, blocks, info, target, **kwargs):
    tokenizer = Tokenizer(model, target, **kwargs)
    started = time.perf_counter()
    result = tokenizer.run(iter(blocks), [info])[0]
    return result, time.perf_counter() - started


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/tiny/model")
    parser.add_argument("--input", default="data/corpus/heldout/tree.avi")
    parser.add_argument("--threshold", default="mse:0.06")
    parser.add_argument("--length-head")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200, 400])
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ElasticTok.from_pretrained(args.model)
    c = model.config
    target = parse_target(args.threshold)
    blocks, info = load_blocks(model, args.input)
    print(f"model {args.model} ({c.name}, Mmax {c.tokens_per_block}, Mmin {c.min_tokens}), {len(blocks)} blocks of "
          f"{args.input}, target {args.threshold}, {torch.get_num_threads()} threads")

    with torch.no_grad():
        fixed, fixed_s = run(model, blocks, info, TokenCount(c.tokens_per_block), window=args.window)
        full, full_s = run(model, blocks, info, target, search="full", window=args.window)
        variants = {
            "fixed length": (fixed, fixed_s),
            "bisection (original)": run(model, blocks, info, target, search="binary", warm_start=False,
                                        window=args.window),
            "bisection, warm start": run(model, blocks, info, target, search="binary", window=args.window),
            f"batched, K={args.candidates}": run(model, blocks, info, target, search="batched",
                                                 candidates=args.candidates, window=args.window),
            "full": (full, full_s),
        }
        if args.length_head:
            head = LengthHead.load(args.length_head, model)
            variants["regression"] = run(model, blocks, info, target, search="regression", length_head=head,
                                         window=args.window)
    n = len(blocks)
    print(f"\n{'search':<24} {'passes/blk':>10} {'evals/blk':>9} {'s/blk':>8} {'x fixed':>8} {'agree':>6} {'tokens':>7}")
    for name, (result, seconds) in variants.items():
        agree = (result.counts == full.counts).float().mean().item() if name != "fixed length" else float("nan")
        print(f"{name:<24} {result.passes / n:>10.2f} {result.evaluations / n:>9.2f} {seconds / n:>8.4f} "
              f"{seconds / fixed_s:>8.2f} {agree:>6.2f} {result.counts.float().mean():>7.1f}")

    print(f"\npeak memory while streaming (window {args.window} blocks, warm bisection):")
    print(f"{'blocks':>8} {'peak RSS MB':>12} {'s/blk':>8}")
    with torch.no_grad():
        for length in args.lengths:
            looped = (blocks[i % len(blocks)] for i in range(length))
            reset_peak()
            tokenizer = Tokenizer(model, target, window=args.window)
            started = time.perf_counter()
            tokenizer.run(looped, [info])
            print(f"{length:>8} {peak_rss_mb():>12.1f} {(time.perf_counter() - started) / length:>8.4f}")


if __name__ == "__main__":
    main()
