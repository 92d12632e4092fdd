"""`make demo`: adaptive tokenization of the bundled street clip with the bundled default model.

Prints, per block, the tokens the search kept and the PSNR they reach beside the PSNR of all
tokens, then the saving against always using all tokens, and writes the side-by-side video and
plots to --out, and report.html: one self-contained page to look at it all in a browser
(with --baseline, also the fixed-length baselines and the eval measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from elastictok import ElasticTok, from_pretrained  # noqa: E402
from elastictok.metrics.quality import psnr_from_mse  # noqa: E402
from elastictok.models.pretrained import DEFAULT_MODEL, sample_video  # noqa: E402
from elastictok.tokenization.options import DEFAULT_REPORT_TARGETS, DEFAULT_TARGET  # noqa: E402
from elastictok.tokenization.targets import Threshold, TokenCount, parse_target  # noqa: E402
from elastictok.tokenization.tokenfile import TokenizedVideo  # noqa: E402
from elastictok.evaluation.plots import write_side_by_side  # noqa: E402
from elastictok.evaluation.report import build_report, parse_targets, write_report_html  # noqa: E402
from elastictok.utils.cores import available_cores, idle_cores  # noqa: E402

HEARTBEAT_SECONDS = 8  # a stage that runs longer says so this often where no progress bar is drawn (a log, a pipe)


@contextlib.contextmanager
def stage(title: str) -> Iterator[None]:
    """Print ``title`` as a stage starts and its time when it ends; between, on a terminal the library's
    progress bars show, elsewhere a line every few seconds says it is still running."""
    print(f"\n{title} ...", flush=True)
    started, done = time.perf_counter(), threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            print(f"  ... {time.perf_counter() - started:.0f} s", flush=True)

    if not sys.stderr.isatty():
        threading.Thread(target=heartbeat, daemon=True).start()
    try:
        yield
    finally:
        done.set()
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)


def use_idle_cores() -> None:
    """One torch thread per core that other work leaves free: threads that fight another job for its cores
    make the demo several times slower."""
    threads, busy = idle_cores()
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    print(f"torch threads: {threads} of {available_cores()} cores (load average {busy:.1f} from other work)")


def threshold_psnr(target: Threshold) -> float:
    return float(psnr_from_mse(torch.tensor(target.value)))


def plot_blocks(adaptive: TokenizedVideo, full: TokenizedVideo, target: Threshold, path: Path) -> None:
    """Tokens per block, and PSNR per block with the kept tokens and with all of them."""
    seconds = np.arange(adaptive.n_blocks) * adaptive.info.frames / adaptive.n_blocks / adaptive.info.fps
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), dpi=120, sharex=True)
    top.step(seconds, adaptive.counts.numpy(), where="post", label=f"adaptive (mse {target.value:g})")
    top.axhline(adaptive.max_tokens, color="grey", linestyle=":", label="all tokens")
    top.set_ylabel("tokens per block")
    top.set_ylim(0, adaptive.max_tokens * 1.05)
    top.legend(fontsize=8)
    bottom.plot(seconds, psnr_from_mse(full.scores).numpy(), "s-", label="all tokens")
    bottom.plot(seconds, psnr_from_mse(adaptive.scores).numpy(), "o-", label="adaptive")
    bottom.axhline(threshold_psnr(target), color="grey", linestyle="--", label="threshold")
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("PSNR (dB)")
    bottom.legend(fontsize=8)
    fig.suptitle(f"{Path(adaptive.info.source).name}: tokens and quality per block")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_blocks(args: argparse.Namespace, adaptive: TokenizedVideo, full: TokenizedVideo, target: Threshold,
                 c) -> None:
    """The per-block table: tokens kept, PSNR kept and with all tokens, whether the block met the target."""
    print(f"{args.video}: {adaptive.info.frames} frames, {adaptive.n_blocks} blocks of {c.frames_per_block} frames "
          f"at {c.resolution[1]}x{c.resolution[0]}; model {args.model!r}, target {args.threshold} "
          f"(PSNR {threshold_psnr(target):.1f} dB)\n")
    print(f"{'block':>5} | {'tokens':>6} | {'PSNR kept (dB)':>14} | {'PSNR all tokens (dB)':>20} | met")
    for k in range(adaptive.n_blocks):
        print(f"{k:>5} | {int(adaptive.counts[k]):>6} | {float(psnr_from_mse(adaptive.scores[k])):>14.2f} | "
              f"{float(psnr_from_mse(full.scores[k])):>20.2f} | {'yes' if adaptive.met[k] else 'no'}")
    used, total = int(adaptive.counts.sum()), adaptive.n_blocks * c.tokens_per_block
    print(f"\nused {used} of {total} tokens ({100 * used / total:.0f}%): {total / used:.2f}x fewer than all tokens; "
          f"{adaptive.met_line()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="bundled model name or directory (default: %(default)s)")
    parser.add_argument("--video", default=str(sample_video()), help="input video (default: the bundled clip)")
    parser.add_argument("--threshold", default=DEFAULT_TARGET,
                        help="per-block MSE target (default: %(default)s, the command line's, about 22 dB)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--baseline", nargs="*", default=[], metavar="B",
                        help="fixed-length baseline model directories for the report, e.g. baselines/default-fixed-0.5")
    args = parser.parse_args()
    target = parse_target(args.threshold)
    if not isinstance(target, Threshold) or target.metric != "mse":
        parser.error("the demo reports PSNR, so its threshold is an MSE (mse:VALUE)")
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    use_idle_cores()
    with stage(f"[1/4] loading model {args.model!r}"):
        model = ElasticTok.from_pretrained(args.model)
    c = model.config
    with stage(f"[2/4] tokenizing {Path(args.video).name} at {args.threshold}, then at all tokens to compare"):
        adaptive = model.tokenize(args.video, target)
        full = model.tokenize(args.video, TokenCount(c.tokens_per_block))
    print_blocks(args, adaptive, full, target, c)

    with stage("[3/4] side-by-side video and plots"):
        summary = write_side_by_side(model, adaptive, args.video, args.out / "side_by_side.mp4")
        plot_blocks(adaptive, full, target, args.out / "blocks.png")
    print(f"{summary}\nwrote {args.out / 'blocks.png'} (tokens and PSNR per block)")

    targets = parse_targets(DEFAULT_REPORT_TARGETS, c.tokens_per_block)
    if target not in targets:
        targets.insert(0, target)
    baselines = [from_pretrained(b).eval() for b in args.baseline]
    with stage(f"[4/4] the report: {len(targets)} targets ({', '.join(t.key for t in targets)})"):
        report = build_report(model, [args.video], targets, baselines, [Path(b).name for b in args.baseline],
                              selected=target, progress=True)
        page = write_report_html(report, args.out / "report.html")
    print(f"\ndone in {time.perf_counter() - started:.0f} s; open the report in a browser:\n{page.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
