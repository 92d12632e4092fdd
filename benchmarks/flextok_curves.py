"""Coarse-to-fine evidence for a trained FlexTok model, on held-out one-block clips.

    python benchmarks/flextok_curves.py --model runs/flextok-tiny/model --data data/corpus/heldout \
        --out docs/results/flextok [--elastictok runs/tiny/model] [--seeds 4] [--max-samples 64]

Writes ``curves.json`` and plots to ``--out``:

- PSNR and SSIM against kept tokens k = 1, 2, 4, ... R with a fixed seed (seed 0), and their mean and
  spread (std) over ``--seeds`` seeds; with ``--elastictok``, that model's curve at the same k
  (clamped to its [Mmin, Mmax]: the count actually used is recorded);
- variety across seeds against k (per-pixel std over the seeds' samples, averaged);
- error by spatial frequency against k: the share of the original's energy that the error carries in
  a low, a mid and a high band of the 2-D spectrum (coarse to fine: the low band falls first);
- drop-token-i sensitivity: PSNR lost when only token i of R is dropped (fixed seed);
- sampling cost and quality against the number of Euler steps (1, 4, 8, 25): seconds per block.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from elastictok.training.datasets import MediaCollection, eval_clips
from elastictok.models.flextok import FlexTok
from elastictok.metrics.quality import block_psnr, block_ssim
from elastictok.utils.fileio import atomic_path

BANDS = {"low": (0.0, 0.125), "mid": (0.125, 0.375), "high": (0.375, 1.0)}  # radius / Nyquist


def token_counts(r: int) -> list[int]:
    counts = [2**i for i in range(r.bit_length()) if 2**i <= r]
    return counts + ([r] if counts[-1] != r else [])


def band_error(recon: torch.Tensor, original: torch.Tensor) -> dict[str, float]:
    """Energy of the error in each radial frequency band over the original's energy there (summed over clips)."""
    err = torch.fft.fft2(recon.float().clamp(-1, 1) - original.float()).abs().pow(2)  # (..., H, W)
    ref = torch.fft.fft2(original.float()).abs().pow(2)
    h, w = original.shape[-2:]
    fy, fx = torch.fft.fftfreq(h)[:, None], torch.fft.fftfreq(w)[None, :]
    radius = torch.sqrt(fy**2 + fx**2) / 0.5  # 1 at the Nyquist frequency on each axis
    return {name: float(err[..., (radius >= lo) & (radius < hi)].sum() / ref[..., (radius >= lo) & (radius < hi)].sum())
            for name, (lo, hi) in BANDS.items()}


def decode_all(model: FlexTok, batches: list[torch.Tensor], latents: list, keep, seed: int, steps: int,
               guidance: float, token_mask=None) -> torch.Tensor:
    """Decode every batch with one seeded generator per batch (seed, batch index); (N, fpb, 3, H, W)."""
    out = []
    for i, (batch, lat) in enumerate(zip(batches, latents)):
        mask = None if token_mask is None else token_mask.expand(batch.shape[0], -1)
        generator = torch.Generator().manual_seed(seed * 100_003 + i)
        out.append(model.decode(lat, keep, steps=steps, guidance=guidance, generator=generator, token_mask=mask))
    return torch.cat(out)


def scores(recon: torch.Tensor, original: torch.Tensor) -> tuple[float, float]:
    return float(block_psnr(recon, original).mean()), float(block_ssim(recon, original).mean())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a FlexTok save_pretrained directory")
    parser.add_argument("--data", nargs="+", required=True, help="held-out images and videos")
    parser.add_argument("--out", required=True, help="folder for curves.json and the plots")
    parser.add_argument("--elastictok", help="an ElasticTok model directory to compare at equal tokens per block")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, help="Euler steps (default: the model's)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    parser.add_argument("--step-grid", type=int, nargs="+", default=[1, 4, 8, 25])
    parser.add_argument("--drop-steps", type=int, default=1, help="Euler steps for drop-token-i (1: one-step estimate)")
    parser.add_argument("--max-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    model = FlexTok.from_pretrained(args.model)
    c = model.config
    steps = args.steps or c.steps
    guidance = c.guidance if args.guidance is None else args.guidance
    media = MediaCollection.load(args.data, short_side=min(c.resolution))
    samples = eval_clips(media, c.resolution, c.frames_per_block)[:args.max_samples]
    batches = [torch.stack(samples[i:i + args.batch_size]) for i in range(0, len(samples), args.batch_size)]
    original = torch.cat(batches)
    latents = [model.encode(b) for b in batches]
    counts = token_counts(c.registers)
    report = {"model": args.model, "config": c.to_dict(), "samples": len(samples), "steps": steps,
              "guidance": guidance, "seeds": args.seeds, "k": counts, "per_k": {}}
    print(f"{len(samples)} clips, k = {counts}, {steps} steps, guidance {guidance}, {args.seeds} seeds")

    # Quality, its spread over seeds, variety across seeds and band errors against k.
    for k in counts:
        recons = [decode_all(model, batches, latents, k, seed, steps, guidance) for seed in range(args.seeds)]
        per_seed = [scores(r, original) for r in recons]
        psnrs, ssims = torch.tensor([p for p, _ in per_seed]), torch.tensor([s for _, s in per_seed])
        stack = torch.stack(recons)  # (seeds, N, fpb, 3, H, W)
        row = {"psnr_seed0": float(psnrs[0]), "ssim_seed0": float(ssims[0]),
               "psnr_mean": float(psnrs.mean()), "psnr_std": float(psnrs.std()) if args.seeds > 1 else 0.0,
               "ssim_mean": float(ssims.mean()), "ssim_std": float(ssims.std()) if args.seeds > 1 else 0.0,
               "variety": float(stack.std(0).mean()) if args.seeds > 1 else 0.0,
               "band_error": band_error(recons[0], original)}
        report["per_k"][k] = row
        print(f"k={k:4d}  PSNR {row['psnr_seed0']:.2f} dB (mean {row['psnr_mean']:.2f} +- {row['psnr_std']:.2f})  "
              f"SSIM {row['ssim_seed0']:.3f}  variety {row['variety']:.4f}  "
              + "  ".join(f"{n} {v:.4f}" for n, v in row["band_error"].items()))

    if args.elastictok:
        from elastictok import ElasticTok
        other = ElasticTok.from_pretrained(args.elastictok)
        report["elastictok"] = {"model": args.elastictok, "per_k": {}}
        for k in counts:
            used = min(other.config.tokens_per_block, max(other.config.min_tokens, k))
            recon = torch.cat([other(b, used).recon for b in batches])
            p, s = scores(recon, original)
            report["elastictok"]["per_k"][k] = {"tokens_used": used, "psnr": p, "ssim": s}
            print(f"ElasticTok k={k:4d} (uses {used})  PSNR {p:.2f} dB  SSIM {s:.3f}")

    # Drop token i alone, every other token kept.
    full = scores(decode_all(model, batches, latents, c.registers, 0, args.drop_steps, guidance), original)[0]
    report["drop_token"] = {"steps": args.drop_steps, "psnr_all": full, "psnr_loss": []}
    for i in range(c.registers):
        mask = torch.ones(1, c.registers, dtype=torch.bool)
        mask[0, i] = False
        dropped = scores(decode_all(model, batches, latents, c.registers, 0, args.drop_steps, guidance, mask),
                         original)[0]
        report["drop_token"]["psnr_loss"].append(full - dropped)
    print("PSNR lost by dropping token i:", " ".join(f"{v:.3f}" for v in report["drop_token"]["psnr_loss"]))

    # Sampling cost and quality against Euler steps, at all tokens and at k = R / 8.
    report["steps_grid"] = []
    for n_steps in args.step_grid:
        row = {"steps": n_steps}
        for k in sorted({c.registers, max(1, c.registers // 8)}):
            started = time.perf_counter()
            recon = decode_all(model, batches, latents, k, 0, n_steps, guidance)
            row[f"seconds_per_block_k{k}"] = (time.perf_counter() - started) / len(samples)
            row[f"psnr_k{k}"], row[f"ssim_k{k}"] = scores(recon, original)
        report["steps_grid"].append(row)
        print(json.dumps(row))

    out = Path(args.out)
    with atomic_path(out / "curves.json") as tmp:  # an interrupted run leaves the previous results whole
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out)
    print(f"wrote {out / 'curves.json'} and plots")


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = report["k"]
    rows = [report["per_k"][k] for k in ks]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, metric in zip(axes[:2], ("psnr", "ssim")):
        ax.errorbar(ks, [r[f"{metric}_mean"] for r in rows], yerr=[r[f"{metric}_std"] for r in rows],
                    label=f"FlexTok, mean +- std over {report['seeds']} seeds", capsize=3)
        ax.plot(ks, [r[f"{metric}_seed0"] for r in rows], "o--", label="FlexTok, seed 0")
        if "elastictok" in report:
            ax.plot(ks, [report["elastictok"]["per_k"][k][metric] for k in ks], "s-", label="ElasticTok")
        ax.set(xscale="log", xlabel="kept tokens per block", ylabel=metric.upper())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.legend(fontsize=8)
    for band in ("low", "mid", "high"):
        axes[2].plot(ks, [r["band_error"][band] for r in rows], "o-", label=f"{band} frequencies")
    axes[2].set(xscale="log", yscale="log", xlabel="kept tokens per block", ylabel="error energy / signal energy")
    axes[2].set_xticks(ks, [str(k) for k in ks])
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_tokens.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(ks, [r["variety"] for r in rows], "o-")
    axes[0].set(xscale="log", xlabel="kept tokens per block", ylabel="per-pixel std across seeds")
    axes[0].set_xticks(ks, [str(k) for k in ks])
    loss = report["drop_token"]["psnr_loss"]
    axes[1].bar(range(len(loss)), loss)
    axes[1].set(xlabel="dropped token i", ylabel="PSNR lost (dB)")
    grid = report["steps_grid"]
    steps = [g["steps"] for g in grid]
    for key in [k for k in grid[0] if k.startswith("psnr_k")]:
        axes[2].plot(steps, [g[key] for g in grid], "o-", label=key.replace("psnr_", "PSNR, "))
    twin = axes[2].twinx()
    seconds_key = next(k for k in grid[0] if k.startswith("seconds_per_block"))
    twin.plot(steps, [g[seconds_key] for g in grid], "k:", label="seconds per block")
    axes[2].set(xscale="log", xlabel="Euler steps", ylabel="PSNR (dB)")
    axes[2].set_xticks(steps, [str(s) for s in steps])
    twin.set_ylabel("seconds per block")
    axes[2].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "seeds_drop_steps.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
