"""PSNR at fixed token counts on held-out videos, for several models side by side.

    python benchmarks/heldout_psnr.py VIDEO... --models default baselines/default-full runs/default-narrow/model
    python benchmarks/heldout_psnr.py VIDEO... --models default-narrow runs/fixed-quarter/model --tokens 64 all

Every block is encoded and decoded with the same number of tokens (all of them unless ``--tokens`` says
otherwise), with the context window each model was trained for, and scored against the re-read source. Prints, per video and over all blocks, the mean
of the per-block PSNR and the PSNR of the mean MSE.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from elastictok import ElasticTokError, TokenCount, TokenizeOptions, from_pretrained
from elastictok.evaluation.measurement import score_blocks
from elastictok.metrics.quality import psnr_from_mse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--models", nargs="+", default=["default"])
    parser.add_argument("--tokens", nargs="+", default=["all"], type=_tokens,
                        help="tokens per block: counts, or all (default)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        rows = measure(args.models, args.videos, args.tokens)
    except ElasticTokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    header = ["model", "tokens/block", *(Path(v).stem for v in args.videos), "mean block PSNR", "PSNR of mean MSE",
              "blocks"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def _tokens(text: str) -> str:
    if text != "all" and not (text.isdecimal() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected a token count >= 1 or all, got {text!r}")
    return text


def measure(models: list[str], videos: list[str], tokens: list[str]) -> list[list[str]]:
    """One table row per (model, token count): mean block PSNR per video and over all blocks."""
    rows = []
    for name in models:
        model = from_pretrained(name).eval()
        for wanted in tokens:
            count = model.config.tokens_per_block if wanted == "all" else int(wanted)
            mses, cells = [], []
            for video in videos:
                with torch.no_grad():
                    encoded = model.tokenize(video, TokenCount(count), TokenizeOptions(progress=False))
                    scores = score_blocks(model, encoded, video)
                mse = torch.from_numpy(scores.metrics["mse"]).double()
                mses.append(mse)
                cells.append(f"{psnr_from_mse(mse).mean():.2f}")
            every = torch.cat(mses)
            rows.append([name, str(count), *cells, f"{psnr_from_mse(every).mean():.2f}",
                         f"{psnr_from_mse(every.mean()):.2f}", str(len(every))])
    return rows


if __name__ == "__main__":
    sys.exit(main())
