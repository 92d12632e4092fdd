"""The CLI's default target, read off the bundled clip: what each candidate target keeps and reaches.

    python benchmarks/default_target.py [--model default] [--targets mse:0.05,psnr:21,psnr:22,tokens:all]

For each target the bundled clip is tokenized (the default binary search) and every block decoded
and scored, as `elastictok encode` and the demo do. Prints per target the mean tokens per block, their
share of the model's tokens, the mean block PSNR and how many blocks met the target; and marks the
targets that show the scene as the default should: a mean block PSNR of at least --psnr with at most
--share of the tokens.
"""

from __future__ import annotations

import argparse
import sys

import torch

from elastictok import TokenizeOptions, from_pretrained
from elastictok.evaluation.report import parse_targets
from elastictok.metrics.quality import psnr_from_mse
from elastictok.models.pretrained import DEFAULT_MODEL, sample_video
from elastictok.tokenization.scoring import tokenize_and_score
from elastictok.tokenization.tokenizer import read_source

CANDIDATES = "mse:0.05,psnr:20,psnr:21,psnr:22,psnr:23,psnr:24,tokens:all"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--video", default=str(sample_video()))
    parser.add_argument("--targets", default=CANDIDATES, help="comma-separated (default: %(default)s)")
    parser.add_argument("--psnr", type=float, default=24.0, help="the mean block PSNR the default should reach")
    parser.add_argument("--share", type=float, default=0.5, help="the largest share of tokens it may keep")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = from_pretrained(args.model).eval()
    per_block = model.config.tokens_per_block
    targets = parse_targets(args.targets, per_block)
    options = TokenizeOptions(progress=False)
    info, blocks = read_source(model, args.video, options)
    with torch.no_grad():
        results = tokenize_and_score(model, info, list(blocks), targets, options, metrics=("mse",))
    print(f"{args.video}: {model.display_name} {args.model!r}, {per_block} tokens per block\n")
    print("| target | tokens per block | share | mean block PSNR | blocks met | shows the scene |")
    print("|---|---|---|---|---|---|")
    for target, (encoded, measured) in zip(targets, results):
        tokens = encoded.counts.float().mean().item()
        psnr = psnr_from_mse(torch.tensor(measured.metrics["mse"], dtype=torch.float64)).mean().item()
        met = encoded.blocks_met
        good = psnr >= args.psnr and tokens <= args.share * per_block
        print(f"| {target.key} | {tokens:.1f} | {tokens / per_block:.0%} | {psnr:.2f} | "
              f"{'-' if met is None else f'{met} of {encoded.n_blocks}'} | {'yes' if good else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
