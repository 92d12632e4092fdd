"""Does a FlexTok decoder sample? PSNR and high-frequency energy of its decode against Euler steps.

    OMP_NUM_THREADS=1 python benchmarks/flextok_steps.py --models flextok [MODEL ...] \
        [--steps 1 8 25] [--guidance 1 1.5 3] [--shift 2 0.1] [--max-clips 20] [--seeds 1] [--json OUT.json]

For each model (a save_pretrained folder or a bundled name), each guidance scale and each number of Euler
steps, every held-out one-block clip (those of training's held-out eval: 4 evenly spaced clips of each video
in configs/flextok-tiny.yaml's eval_data, or of the videos --data names; images are left out) is encoded with all registers and decoded from seeded noise (the same noise for every steps and
guidance). ``--shift`` sets the Euler grid's ``sample_shift`` (default: each model's own; under 1 spends more
steps near the clean end, where fine detail forms). Printed per (model, shift, guidance):

- PSNR: the mean over clips of each clip's PSNR (the decode clipped to [-1, 1]);
- HF: the decode's high-frequency energy over the source's. High-frequency energy is the energy of the 2-D
  spectrum of every frame and colour channel at radius >= 0.375 of the Nyquist frequency (spatial periods
  under about 5.3 pixels; the "high" band of benchmarks/flextok_curves.py), summed over all clips. 1: as much
  fine detail as the source; a posterior mean (the one-step estimate) is blurred, well below 1; noise left by
  an unconverged sampler, or artefacts, push it above 1;
- gap: PSNR at the most steps minus the unguided one-step estimate's PSNR (a sampler that works loses
  little: the target is a gap of at most 2 dB with HF within 0.7 to 1.3 at 25 steps).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from elastictok import ElasticTokError
from elastictok.metrics.quality import block_psnr, high_frequency_energy
from elastictok.models.flextok import FlexTok
from elastictok.models.registry import from_pretrained
from elastictok.training.config import TrainConfig
from elastictok.training.datasets import spaced_video_clips
from elastictok.utils.fileio import atomic_path

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_CONFIG = ROOT / "configs" / "flextok-tiny.yaml"


@torch.no_grad()
def decode(model: FlexTok, clips: torch.Tensor, steps: int, guidance: float, seed: int, batch_size: int
           ) -> torch.Tensor:
    """Every clip encoded with all registers and decoded; batch i draws its noise from seed (seed, i)."""
    out = []
    for i in range(0, len(clips), batch_size):
        generator = torch.Generator().manual_seed(seed * 100_003 + i)
        latents = model.encode(clips[i:i + batch_size])
        out.append(model.decode(latents, steps=steps, guidance=guidance, generator=generator))
    return torch.cat(out)


def measure(model: FlexTok, clips: torch.Tensor, steps: list[int], guidance: float, seeds: int, batch_size: int
            ) -> dict[int, dict[str, float]]:
    """{steps: {psnr, hf_ratio, seconds_per_clip}}, PSNR and HF averaged over ``seeds`` noise draws."""
    source_hf = high_frequency_energy(clips)
    results = {}
    for n in steps:
        started = time.perf_counter()
        recons = [decode(model, clips, n, guidance, seed, batch_size) for seed in range(seeds)]
        seconds = (time.perf_counter() - started) / (seeds * len(clips))
        results[n] = {"psnr": sum(float(block_psnr(r, clips).mean()) for r in recons) / seeds,
                      "hf_ratio": sum(high_frequency_energy(r) for r in recons) / seeds / source_hf,
                      "seconds_per_clip": seconds}
    return results


def table(rows: list[dict], steps: list[int]) -> str:
    """The printed table: one line per (model, shift, guidance)."""
    head = (["model", "shift", "guidance"] + [f"PSNR@{n}" for n in steps] + [f"HF@{n}" for n in steps]
            + [f"gap@{steps[-1]}"])
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for row in rows:
        cells = [row["model"], f"{row['shift']:g}", f"{row['guidance']:g}"]
        cells += [f"{row['by_steps'][n]['psnr']:.2f}" for n in steps]
        cells += [f"{row['by_steps'][n]['hf_ratio']:.2f}" for n in steps]
        cells.append(f"{row['gap']:+.2f}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["flextok"], help="FlexTok model folders or bundled names "
                        "(default: the bundled flextok)")
    parser.add_argument("--data", nargs="+", help="held-out videos (default: the eval_data of "
                        f"{HELD_OUT_CONFIG.relative_to(ROOT)})")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 8, 25], help="Euler steps (default: 1 8 25)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0],
                        help="guidance scales; 1 (none) is always measured (default: 1)")
    parser.add_argument("--shift", type=float, nargs="+",
                        help="sample_shift values of the Euler grid (default: each model's own)")
    parser.add_argument("--max-clips", type=int, default=20,
                        help="at most N held-out clips, evenly spaced (default: 20, all)")
    parser.add_argument("--seeds", type=int, default=1, help="noise draws averaged (default: 1)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    if min(args.steps) < 1 or args.max_clips < 1 or args.seeds < 1 or args.batch_size < 1 or args.threads < 1:
        parser.error("--steps, --max-clips, --seeds, --batch-size and --threads must be at least 1")
    if min(args.guidance) < 0:
        parser.error("--guidance must be >= 0")
    if args.shift and min(args.shift) <= 0:
        parser.error("--shift must be > 0")
    return args


def run(args: argparse.Namespace) -> list[dict]:
    """One row per (model, shift, guidance), guidance 1 first; prints each as it is measured."""
    torch.set_num_threads(args.threads)
    steps = sorted(set(args.steps) | {1})
    data = args.data or TrainConfig.from_yaml(HELD_OUT_CONFIG).eval_data
    rows = []
    for name in args.models:
        model = from_pretrained(name).eval()
        if not isinstance(model, FlexTok):
            raise ElasticTokError(f"{name} is not a FlexTok model (it has no sampler to step)")
        clips = spaced_video_clips(data, model.config.resolution, model.config.frames_per_block, args.max_clips)
        for shift in args.shift or [model.config.sample_shift]:
            model.config.sample_shift = shift
            one_step = None
            for guidance in sorted(set(args.guidance) | {1.0}, key=lambda g: (g != 1.0, g)):
                by_steps = measure(model, clips, steps, guidance, args.seeds, args.batch_size)
                one_step = by_steps[1]["psnr"] if one_step is None else one_step  # the unguided one-step estimate
                rows.append({"model": name, "shift": shift, "guidance": guidance, "clips": len(clips),
                             "by_steps": by_steps, "gap": by_steps[steps[-1]]["psnr"] - one_step})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = sorted(set(args.steps) | {1})
    try:
        rows = run(args)
        if args.json:
            with atomic_path(args.json) as tmp:  # whole or not at all, Ctrl-C included
                tmp.write_text(json.dumps({"steps": steps, "rows": rows}, indent=2) + "\n")
    except ElasticTokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{rows[0]['clips']} held-out clips, all registers, {args.seeds} seed(s); HF: high-frequency energy "
          "over the source's; gap: PSNR at the most steps minus the unguided one-step PSNR\n")
    print(table(rows, steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
