"""Held-out PSNR against training time for several runs (the "what would reach the target" curve).

    python scripts/plot_training_curves.py runs/default runs/default-narrow --out docs/results/training_curves.png

Reads each run's eval.jsonl (held-out PSNR at keep fractions) and log.csv (cumulative frames/s), and
plots PSNR with all tokens and at 1/4 of them against wall minutes and against steps. Prints the
table it plots. Wall minutes are those of the run as it ran: note how many runs shared the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402


def load_run(run: Path) -> list[dict]:
    """[{step, minutes, psnr: {fraction: dB}}] from a run directory."""
    cfg = yaml.safe_load((run / "train_config.yaml").read_text())
    frames_per_step = cfg["batch_size"] * cfg["n_blocks"] * 4 * cfg.get("grad_accum", 1)
    with (run / "log.csv").open() as f:
        rate = {int(r["step"]): float(r["frames_per_s"]) for r in csv.DictReader(f)}
    points = []
    for line in (run / "eval.jsonl").read_text().splitlines():
        entry = json.loads(line)
        step = entry["step"]
        nearest = min(rate, key=lambda s: abs(s - step))
        points.append({"step": step, "minutes": step * frames_per_step / rate[nearest] / 60,
                       "psnr": {float(k): v for k, v in entry["psnr"].items()}})
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    print("| run | step | minutes | PSNR 1/4 | PSNR 1/2 | PSNR all |\n|---|---|---|---|---|---|")
    for run in args.runs:
        points = load_run(run)
        for p in points:
            print(f"| {run.name} | {p['step']} | {p['minutes']:.0f} | {p['psnr'].get(0.25, float('nan')):.2f} | "
                  f"{p['psnr'].get(0.5, float('nan')):.2f} | {p['psnr'][1.0]:.2f} |")
        for ax, x in zip(axes, ("minutes", "step")):
            ax.plot([p[x] for p in points], [p["psnr"][1.0] for p in points], "o-", label=f"{run.name}, all tokens")
            ax.plot([p[x] for p in points], [p["psnr"].get(0.25) for p in points], "x--", label=f"{run.name}, 1/4")
    for ax, x in zip(axes, ("wall minutes (runs sharing 2 cores)", "training step")):
        ax.set_xlabel(x)
        ax.set_ylabel("held-out video PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
