"""Adaptive search cost against a fixed-length encode, every search side by side in one process.

    python benchmarks/search.py [--model default] [--input CLIP] [--threshold mse:0.03] [--repeats 3]
                                [--blocks N] [--length-head head.safetensors] [--lengths 50 100]

Rows: fixed length (one encoder and one decoder pass per block at Mmax: the unit), plain
bisection (the original's strategy), warm-started bisection, the same with the encoder re-run for
every candidate (the cost before one-pass encoding; only for a mask-free encoder), K-ary batched
search, full search (the exact reference), the regression head (with --length-head), any search
added to ``SEARCHES`` below, and the floor of exact search: full search's counts given in advance,
proved with one encoder pass and two decoder passes per block (n meets, n - 1 does not).

Columns: wall time (best of ``--repeats`` interleaved runs; full search runs once, first, so
its time includes the warm-up the others do not pay) and its ratio
to fixed length; encoder and decoder passes and candidate counts scored per block; the share of
blocks whose count equals full search's; the share failing the target although some count meets
it (full search says which); mean tokens per block. ``--lengths`` adds peak memory while streaming
the clip looped to those lengths with the model's context window; ``--batch-rows 1 2 4 8`` adds
what one decoder pass costs per candidate when it scores that many candidates at once (batched
scoring pays only where a wider batch is cheaper per row).
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
from elastictok.models.pretrained import sample_video
from elastictok.models.elastictok.coder import ElasticTokCoder
from elastictok.tokenization.options import SEARCHES as LIBRARY_SEARCHES
from elastictok.tokenization.options import TokenizeOptions
from elastictok.tokenization.targets import TokenCount, parse_target
from elastictok.tokenization.tokenizer import Tokenizer


def load_blocks(model, path: str) -> tuple[list[torch.Tensor], object]:
    c = model.config
    info, blocks = iter_media_blocks(path, c.resolution, c.frames_per_block)
    return [to_model(b)[None] for b in blocks], info


def autocast(model, dtype: str):
    """bf16 autocast on the model's device when ``dtype`` is "bf16" (a no-op for fp32)."""
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def run(model, blocks, info, target, dtype: str, **kwargs):
    tokenizer = Tokenizer(model, target, **kwargs)
    started = time.perf_counter()
    with torch.no_grad(), autocast(model, dtype):
        result = tokenizer.run(iter(blocks), [info])[0]
    return result, time.perf_counter() - started


def prove_known_counts(model, blocks, counts: torch.Tensor, target, window, dtype: str
                       ) -> tuple[float, ElasticTokCoder]:
    """The least an exact search can do when it already knows each block's count n: one encoder pass,
    and decoder passes at n - 1 (fails) and n (meets) to prove it, scored as a search scores.
    Returns the seconds and the coder (its pass counters)."""
    coder = ElasticTokCoder(model, 1, window)
    row, lo = torch.zeros(1, dtype=torch.long), model.config.min_tokens
    started = time.perf_counter()
    with torch.no_grad(), autocast(model, dtype):
        for block, n in zip(blocks, counts.tolist()):
            patches = model.patchify(block)
            if n > lo:
                target.score(coder.trial(patches, torch.tensor([n - 1]), row).recon, block)
            trial = coder.trial(patches, torch.tensor([n]), row)
            target.score(trial.recon, block)
            coder.commit(trial)
    return time.perf_counter() - started, coder


def decoder_seconds_per_row(model, blocks, rows: int, dtype: str, repeats: int = 5) -> float:
    """Best seconds per row of one decoder pass (transformer, output head, unpatchify) scoring ``rows``
    candidates of the clip's second block against the first block's cache, as the search does."""
    coder, c = ElasticTokCoder(model, 1, 1), model.config
    with torch.no_grad(), autocast(model, dtype):
        first = coder.trial(model.patchify(blocks[0]), torch.tensor([c.tokens_per_block]), torch.zeros(1).long())
        coder.commit(first)
        counts = torch.linspace(c.min_tokens, c.tokens_per_block, rows).long()
        z = coder.trial(model.patchify(blocks[1]), counts, torch.zeros(rows).long()).z
        cache = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in coder.dec_cache]
        best = float("inf")
        for _ in range(repeats + 1):  # the first run warms up
            started = time.perf_counter()
            model.unpatchify(model.decode_latents(z, cache, coder.start)[0].float())
            best = min(best, time.perf_counter() - started)
    return best / rows


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")


class EncoderPerCandidate:
    """The model as the block coder saw it before one-pass encoding: the encoder re-run for every
    candidate count (same results, for a mask-free encoder; only the cost differs)."""

    encoder_reads_keep = True

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def searches(args, model, c) -> dict[str, tuple[object, dict]]:
    """name -> (target override or None, Tokenizer keyword arguments; "model" replaces the model)."""
    rows: dict[str, tuple[object, dict]] = {
        "fixed length": (TokenCount(c.tokens_per_block), {}),
        "bisection (original)": (None, dict(search="binary", warm_start=False)),
        "bisection, warm start": (None, dict(search="binary")),
    }
    if not model.encoder_reads_keep:
        rows["warm, encoder per count"] = (None, dict(search="binary", model=EncoderPerCandidate(model)))
    rows |= {
        f"batched, K={args.candidates}": (None, dict(search="batched", candidates=args.candidates)),
        "full": (None, dict(search="full")),
    }
    if args.length_head:
        from elastictok.tokenization.length_head import LengthHead
        rows["regression"] = (None, dict(search="regression", length_head=LengthHead.load(args.length_head, model)))
    for name in LIBRARY_SEARCHES:  # searches added to the library after this benchmark was written
        if name not in ("binary", "full", "batched", "regression"):
            rows[name] = (None, dict(search=name))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--input", default=str(sample_video()))
    parser.add_argument("--threshold", default="mse:0.03")
    parser.add_argument("--length-head")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--window", default="model", help="context blocks, or 'model' (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs; the best time counts")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda ... (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--blocks", type=int, help="only the first N blocks of the input")
    parser.add_argument("--lengths", type=int, nargs="*", default=[])
    parser.add_argument("--batch-rows", type=int, nargs="*", default=[], help="decoder cost per row at these batches")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    window = args.window if args.window == "model" else int(args.window)
    torch.manual_seed(0)
    model = ElasticTok.from_pretrained(args.model).to(args.device)
    c = model.config
    target = parse_target(args.threshold)
    blocks, info = load_blocks(model, args.input)
    blocks = blocks[:args.blocks] if args.blocks else blocks
    if args.batch_rows and len(blocks) < 2:
        parser.error("--batch-rows decodes a second block against the first: give an input of 2 blocks or more")
    n = len(blocks)
    print(f"model {args.model} ({c.name}, Mmax {c.tokens_per_block}, Mmin {c.min_tokens}), {n} blocks of "
          f"{args.input}, target {args.threshold}, window {window}, {args.dtype} on {args.device}, "
          f"{torch.get_num_threads()} threads, "
          f"best of {args.repeats}")

    rows = searches(args, model, c)
    order = list(rows)
    seconds: dict[str, float] = {name: float("inf") for name in rows}
    _, kwargs = rows.pop("full")  # the reference: run once, it takes longer than all the rest
    full, seconds["full"] = run(model, blocks, info, target, args.dtype, window=window, **kwargs)
    results: dict[str, object] = {"full": full}
    context = TokenizeOptions(window=window).resolve_window(model)
    floor, prover = float("inf"), None
    for _ in range(args.repeats):
        for name, (override, kwargs) in rows.items():
            kwargs = dict(kwargs)
            result, s = run(kwargs.pop("model", model), blocks, info, override or target, args.dtype, window=window,
                            **kwargs)
            results[name], seconds[name] = result, min(seconds[name], s)
        s, prover = prove_known_counts(model, blocks, full.counts, target, context, args.dtype)
        floor = min(floor, s)
    reachable = target.meets(full.scores)
    print(f"{int((~reachable).sum())} of {n} blocks miss the target at every count (not counted as failures)\n")
    print(f"{'search':<24} {'wall s':>7} {'x fixed':>8} {'enc/blk':>7} {'dec/blk':>7} {'evals/blk':>9} {'= full':>7} "
          f"{'fail':>6} {'tokens':>7}")

    def row(name: str, s: float, done, agree: str, fail: str, counts: torch.Tensor) -> None:
        """One line; ``done`` counts the passes (a tokenized result or a block coder)."""
        print(f"{name:<24} {s:>7.3f} {s / seconds['fixed length']:>8.2f} {done.encoder_passes / n:>7.2f} "
              f"{done.passes / n:>7.2f} {done.evaluations / n:>9.2f} {agree:>7} {fail:>6} "
              f"{counts.float().mean():>7.1f}")

    for name in order:
        result, fixed = results[name], name == "fixed length"
        agree = "" if fixed else f"{100 * (result.counts == full.counts).float().mean():.0f}%"
        fail = "" if fixed else f"{100 * (reachable & ~target.meets(result.scores)).float().mean():.0f}%"
        row(name, seconds[name], result, agree, fail, result.counts)
    row("floor: counts known", floor, prover, "100%", "0%", full.counts)

    if args.batch_rows:
        print(f"\none decoder pass scoring several candidates at once ({torch.get_num_threads()} threads):")
        print(f"{'candidates':>10} {'ms per candidate':>17}")
        for k in args.batch_rows:
            print(f"{k:>10} {1e3 * decoder_seconds_per_row(model, blocks, k, args.dtype):>17.1f}")

    if args.lengths:
        print(f"\npeak memory while streaming (window {window}, warm bisection):")
        print(f"{'blocks':>8} {'peak RSS MB':>12} {'s/blk':>8}")
        for length in args.lengths:
            looped = [blocks[i % n] for i in range(length)]
            reset_peak()
            _, s = run(model, looped, info, target, args.dtype, window=window)
            print(f"{length:>8} {peak_rss_mb():>12.1f} {s / length:>8.4f}")


if __name__ == "__main__":
    main()
