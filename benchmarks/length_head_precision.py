"""How precisely must a one-pass head know a block's MSE curve to match a search on 90% of blocks?

    python benchmarks/length_head_precision.py runs/length-head/heldout.curves.pt \
        [--head src/elastictok/weights/default/length_head.safetensors] [--thresholds 0.02,0.03,0.05]

Reads held-out curves recorded by ``benchmarks/length_head.py`` (each block's MSE at every 8th count).
An oracle that knows each curve's shape exactly but its level only to within a random factor
exp(sigma * N(0, 1)) per block picks its count like the shipped head (first crossing), aiming at the
threshold itself, then 2 sigma below it (a margin that covers 98% of its errors); the tables give, per
threshold and sigma, the share of blocks more than 8 tokens off the search and the share missing a
reachable threshold (the goal: at most 10% of each), 20 draws each. With ``--head``,
also the head's own error in log MSE at each block's searched count, for comparison with sigma.
"""

from __future__ import annotations

import argparse
import math

import torch

from elastictok.models.registry import from_pretrained
from elastictok.tokenization.length_head import LengthHead, first_crossing, safe_log
from elastictok.training.length_head import Curves

SIGMAS = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1]
DRAWS = 20


def oracle_row(curves: Curves, threshold: float, sigma: float, margin: float, generator: torch.Generator
               ) -> tuple[float, float]:
    """Mean shares (off by more than 8 tokens, missing) over DRAWS draws of a per-block level error, aiming
    ``margin`` (in log MSE) below the threshold."""
    off = fails = 0.0
    for _ in range(DRAWS):
        noisy = curves.log_mse + sigma * torch.randn(len(curves.mse), 1, generator=generator)
        noisy[:, -1] = curves.log_mse[:, -1]  # the all-token MSE is measured, as the shipped head is told it
        scores = curves.compare(first_crossing(noisy, curves.counts, math.log(threshold) - margin), threshold)
        off, fails = off + scores["off"] / DRAWS, fails + scores["fails"] / DRAWS
    return off, fails


def head_error(curves: Curves, head: LengthHead, threshold: float) -> torch.Tensor:
    """|predicted - recorded| log MSE at each block's searched count (blocks that reach the threshold below Mmax)."""
    with torch.no_grad():
        predicted = head(curves.inputs) + safe_log(curves.mse[:, -1])[:, None]
    index = torch.searchsorted(curves.counts, curves.searched(threshold)).clamp(max=len(curves.counts) - 1)
    inside = (curves.mse[:, -1] <= threshold) & (index < len(curves.counts) - 1)
    return (predicted - curves.log_mse).gather(1, index[:, None])[:, 0][inside].abs()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("curves", help="a held-out .curves.pt from benchmarks/length_head.py --cache")
    parser.add_argument("--head", help="a length_head.safetensors to compare (its model: --model)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--thresholds", default="0.02,0.03,0.05", help="MSE thresholds, comma-separated")
    args = parser.parse_args()
    curves = Curves.load(args.curves)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    generator = torch.Generator().manual_seed(0)
    print(f"{len(curves.mse)} blocks; per cell: more than 8 tokens off the search / missing the threshold")
    for margin_sigmas in (0, 2):
        print(f"\naiming {margin_sigmas} sigma below the threshold")
        print(f"{'threshold':<10}" + "".join(f"{f'sigma {s}':>16}" for s in SIGMAS))
        for threshold in thresholds:
            cells = (oracle_row(curves, threshold, s, margin_sigmas * s, generator) for s in SIGMAS)
            print(f"{f'mse {threshold}':<10}" + "".join(f"{f'{100 * o:.0f}% / {100 * f:.0f}%':>16}" for o, f in cells))
    if args.head:
        head = LengthHead.load(args.head, from_pretrained(args.model))
        for threshold in thresholds:
            error = head_error(curves, head, threshold)
            print(f"head at mse {threshold}: |log MSE error| at the searched count, median {error.median():.3f}, "
                  f"within 0.01 on {(error < 0.01).float().mean():.0%}, within 0.05 on "
                  f"{(error < 0.05).float().mean():.0%} of {len(error)} blocks")


if __name__ == "__main__":
    main()
