"""Does decoding a block with the previous blocks as context help or hurt? Held-out clips of several blocks,
decoded in sequence against each block decoded on its own.

    OMP_NUM_THREADS=1 python benchmarks/sequential_context.py --models flextok runs/flextok-tiny-flow/model \
        [--blocks 4] [--max-clips 10] [--steps N] [--guidance G] [--shift S] [--json OUT.json]

Each clip (``--blocks`` consecutive blocks, evenly spaced over each held-out video as training's held-out eval
cuts them; default: the eval_data of configs/flextok-tiny.yaml) is tokenized with all tokens of every block and
decoded through the library's own path (``tokenize`` / ``detokenize``, the sampler the user gets), two ways:

- in sequence: the clip as one input, every block decoded with the blocks before it as context (the model's
  ``window``), as a long video is decoded;
- alone: every block as its own one-block input, no context.

Printed per model: PSNR at each block position of the clip and over all blocks, both ways. Sequential decoding
works when it is at least as good as decoding alone; a decoder trained on clean context but fed its own
imperfect output loses more with every block. Works for every family (ElasticTok's decoder has no sampler, so
``--steps``, ``--guidance`` and ``--shift``, the Euler grid's ``sample_shift``, apply to FlexTok models only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from elastictok import ElasticTokError
from elastictok.metrics.quality import mse_per_block, psnr_from_mse
from elastictok.models.registry import from_pretrained
from elastictok.tokenization.targets import TokenCount
from elastictok.tokenization.tokenizer import detokenize, tokenize
from elastictok.training.config import TrainConfig
from elastictok.training.datasets import spaced_video_clips
from elastictok.utils.fileio import atomic_path

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_CONFIG = ROOT / "configs" / "flextok-tiny.yaml"


def block_psnr(model, clips: torch.Tensor, sampler: dict) -> torch.Tensor:
    """(N, n_blocks) PSNR of every block of ``clips`` tokenized with all tokens and decoded in one input."""
    c = model.config
    encoded = tokenize(model, clips, TokenCount(c.tokens_per_block), progress=False, **sampler)
    decoded = torch.stack(detokenize(model, encoded, **sampler))
    return psnr_from_mse(mse_per_block(decoded, clips, c.frames_per_block))


@torch.no_grad()
def measure(model, clips: torch.Tensor, sampler: dict) -> dict[str, list[float]]:
    """Mean PSNR at each block position, decoded in sequence and alone."""
    n, frames = clips.shape[0], model.config.frames_per_block
    sequential = block_psnr(model, clips, sampler)
    alone = block_psnr(model, clips.reshape(-1, frames, *clips.shape[2:]), sampler).reshape(n, -1)
    return {"sequential": sequential.mean(0).tolist(), "alone": alone.mean(0).tolist(),
            "sequential_mean": float(sequential.mean()), "alone_mean": float(alone.mean())}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["flextok"], help="model folders or bundled names")
    parser.add_argument("--data", nargs="+", help="held-out videos (default: the eval_data of "
                        f"{HELD_OUT_CONFIG.relative_to(ROOT)})")
    parser.add_argument("--blocks", type=int, default=4, help="blocks per clip (default: 4)")
    parser.add_argument("--max-clips", type=int, default=10, help="at most N clips, evenly spaced (default: 10)")
    parser.add_argument("--steps", type=int, help="Euler steps of a sampling decoder (default: the model's)")
    parser.add_argument("--guidance", type=float, help="guidance of a sampling decoder (default: the model's)")
    parser.add_argument("--shift", type=float, help="sample_shift of a sampling decoder's Euler grid (default: the model's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    if args.blocks < 2 or args.max_clips < 1 or args.threads < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--blocks must be at least 2, and --max-clips, --threads and --steps at least 1")
    if args.shift is not None and args.shift <= 0:
        parser.error("--shift must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = args.data or TrainConfig.from_yaml(HELD_OUT_CONFIG).eval_data
    rows = []
    try:
        for name in args.models:
            model = from_pretrained(name).eval()
            if args.shift is not None:
                if not model.has_sampler:
                    raise ElasticTokError(f"{name} has no sampler: --shift applies to FlexTok models only")
                model.config.sample_shift = args.shift
            sampler = {k: v for k, v in (("steps", args.steps), ("guidance", args.guidance)) if v is not None}
            clips = spaced_video_clips(data, model.config.resolution, args.blocks * model.config.frames_per_block,
                                       args.max_clips)
            rows.append({"model": name, "clips": len(clips), **sampler, "shift": args.shift, **measure(model, clips, sampler)})
            print(json.dumps(rows[-1]), flush=True)
        if args.json:
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(rows, indent=2) + "\n")
    except ElasticTokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\nPSNR (dB) by block position in clips of {args.blocks} blocks, all tokens:\n")
    print("model | decoded | " + " | ".join(f"block {i + 1}" for i in range(args.blocks)) + " | all")
    print(" | ".join("---" for _ in range(args.blocks + 3)))
    for row in rows:
        for way in ("sequential", "alone"):
            cells = " | ".join(f"{v:.2f}" for v in row[way])
            print(f"{row['model']} | {way} | {cells} | {row[way + '_mean']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
