"""How many probes a search strategy needs, replayed on recorded error curves instead of the model.

    python benchmarks/search_probes.py [--model default] [--input CLIP] [--context 0.05]
                                       [--thresholds 0.02 0.03 0.05 0.08] [--cache curves.pt]

Records each block's MSE at every count in [Mmin, Mmax] once (the slow part: one decoder pass per
count, about half a minute per block of the default model on one thread), each block after the earlier ones
as full search at ``--context`` committed them. Then every strategy runs on those curves at each
threshold in milliseconds: probes (decoder passes) per block and the share of blocks whose count
equals full search's. A candidate strategy can be judged here before it is built into the library.

Rows: the library's searches (warm and cold bisection, K-ary), and a secant search that reads the
probes' scores, not only pass or fail: it aims each probe where the line through the nearest
failing and passing probes (in log MSE) crosses the threshold, or extrapolates from one probe
with ``--slope`` (log MSE per token), and falls back to bisection after ``--secant-probes`` probes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, Generator

import torch

from elastictok import ElasticTok
from elastictok.media.blocks import iter_media_blocks
from elastictok.media.transforms import to_model
from elastictok.models.pretrained import sample_video
from elastictok.models.elastictok.coder import ElasticTokCoder
from elastictok.tokenization.length_head import error_curves
from elastictok.tokenization.search import bisection, exhaustive, kary

# A strategy: (lo, hi, guess) -> a generator that yields counts and is sent their log(MSE / threshold).
Strategy = Callable[[int, int, int | None], Generator[list[int], list[float], None]]


@torch.no_grad()
def record_curves(model, path: str, threshold: float, max_blocks: int | None) -> torch.Tensor:
    """(blocks, Mmax - Mmin + 1) MSE at every count, each block after full search's earlier choices."""
    c = model.config
    counts = torch.arange(c.min_tokens, c.tokens_per_block + 1)
    coder = ElasticTokCoder(model, 1, c.window)
    _, blocks = iter_media_blocks(path, c.resolution, c.frames_per_block)
    curves = []
    for k, block in enumerate(blocks):
        if k == max_blocks:
            break
        x = to_model(block)[None]
        patches = model.patchify(x)
        curve = error_curves(coder, x, patches, counts)[0]
        meeting = (curve <= threshold).nonzero()
        chosen = int(counts[meeting[0, 0]]) if len(meeting) else c.tokens_per_block
        coder.commit(coder.trial(patches, torch.tensor([chosen]), torch.zeros(1).long()))
        curves.append(curve)
        print(f"block {k}: {chosen} tokens", flush=True)
    return torch.stack(curves)


def from_booleans(search: Callable[..., Generator[list[int], list[bool], None]]) -> Strategy:
    """A library search (sent pass/fail) as a strategy (sent log(MSE / threshold))."""
    def strategy(lo: int, hi: int, guess: int | None):
        probes = search(lo, hi, guess)
        margins = yield next(probes)
        while True:
            try:
                margins = yield probes.send([m <= 0 for m in margins])
            except StopIteration:
                return
    return strategy


def secant(slope: float, max_secant: int) -> Strategy:
    """Probe where the log-MSE line through the nearest failing and passing probes meets the threshold."""
    def strategy(lo: int, hi: int, guess: int | None):
        seen: dict[int, float] = {}
        probe = guess if guess is not None else (lo + hi) // 2
        while lo < hi:
            probe = max(lo, min(hi - 1, probe))
            seen[probe] = (yield [probe])[0]
            if seen[probe] <= 0:
                hi = probe
            else:
                lo = probe + 1
            failing = [n for n, m in seen.items() if m > 0 and n < hi]
            if len(seen) >= max_secant or lo >= hi:
                probe = (lo + hi) // 2
            elif failing and hi in seen:
                a = max(failing)
                probe = math.ceil(a + seen[a] / (seen[a] - seen[hi]) * (hi - a))
            elif hi in seen:
                probe = math.ceil(hi - seen[hi] / slope)
            else:
                a = max(failing)
                probe = math.ceil(a - seen[a] / slope)
    return strategy


def replay(strategy: Strategy, curves: torch.Tensor, lo: int, threshold: float) -> tuple[list[int], int, int]:
    """Each block's chosen count (the smallest probe that met, else Mmax), the probes (counts scored)
    and passes (batches of them) spent, warm started from the previous block's count as the tokenizer is."""
    hi = lo + curves.shape[1] - 1
    chosen, probes, passes, guess = [], 0, 0, None
    for curve in curves:
        best, search = hi, strategy(lo, hi, guess)
        try:
            counts = next(search)
            while True:
                probes, passes = probes + len(counts), passes + 1
                margins = [math.log(float(curve[n - lo]) / threshold) for n in counts]
                best = min([best] + [n for n, m in zip(counts, margins) if m <= 0])
                counts = search.send(margins)
        except StopIteration:
            pass
        chosen.append(best)
        guess = best
    return chosen, probes, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--input", default=str(sample_video()))
    parser.add_argument("--context", type=float, default=0.05, help="the MSE whose full search sets the context")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.03, 0.05, 0.08])
    parser.add_argument("--slope", type=float, default=-0.04, help="log MSE per token, for one-probe extrapolation")
    parser.add_argument("--secant-probes", type=int, default=4)
    parser.add_argument("--blocks", type=int, help="only the first N blocks of the input")
    parser.add_argument("--cache", help="a .pt file: read the curves from it, or record them into it")
    args = parser.parse_args()
    model = ElasticTok.from_pretrained(args.model).eval()
    c = model.config
    if args.cache and Path(args.cache).exists():
        curves = torch.load(args.cache, weights_only=True)
    else:
        curves = record_curves(model, args.input, args.context, args.blocks)
        if args.cache:
            torch.save(curves, args.cache)
    strategies: dict[str, Strategy] = {
        "bisection, cold": from_booleans(lambda lo, hi, guess: bisection(lo, hi)),
        "bisection, warm (default)": from_booleans(bisection),
        "K-ary, K=4": from_booleans(lambda lo, hi, guess: kary(lo, hi, 4)),
        f"secant (slope {args.slope})": secant(args.slope, args.secant_probes),
    }
    print(f"{len(curves)} blocks of {args.input}, counts {c.min_tokens}..{c.tokens_per_block}, context: full search "
          f"at mse {args.context}")
    print(f"{'threshold':>9} {'search':<26} {'probes/blk':>10} {'passes/blk':>10} {'= full':>7} {'tokens':>7}")
    for threshold in args.thresholds:
        every = from_booleans(lambda lo, hi, guess: exhaustive(lo, hi, hi - lo + 1))
        full, _, _ = replay(every, curves, c.min_tokens, threshold)
        for name, strategy in strategies.items():
            chosen, probes, passes = replay(strategy, curves, c.min_tokens, threshold)
            same = sum(a == b for a, b in zip(chosen, full)) / len(full)
            print(f"{threshold:>9} {name:<26} {probes / len(curves):>10.2f} {passes / len(curves):>10.2f} "
                  f"{100 * same:>6.0f}% {sum(chosen) / len(chosen):>7.1f}")


if __name__ == "__main__":
    main()
