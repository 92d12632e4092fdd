"""`make demo`: train the tiny preset for about a minute on real photos, then tokenize adaptively with it.

Until a trained default model ships with the package, this is the end-to-end check that the
library trains and reconstructs on a fresh machine: real photos from scikit-image (bundled with
that package), a real short video made by panning across one of them, the tiny preset, bf16.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from elastictok import ElasticTok
from elastictok.data import fit_to_resolution, from_model, to_model, write_image, write_video
from elastictok.targets import Target
from elastictok.visualize import reconstruct_side_by_side
from elastictok.metrics import psnr
from elastictok.train import TrainConfig, train


def make_media(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    import skimage.data as sk

    photos = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket(), sk.immunohistochemistry(), sk.retina()]
    folder.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(photos[1:]):
        Image.fromarray(photo).save(folder / f"photo{i}.png")
    pan = torch.from_numpy(photos[0])
    frames = torch.stack([pan[64:448, 3 * t:3 * t + 384] for t in range(40)])
    write_video(folder / "pan.mp4", frames, fps=24)
    return photos, frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--minutes", type=float, default=1.0)
    args = parser.parse_args()
    torch.manual_seed(0)

    photos, pan = make_media(args.out / "media")
    cfg = TrainConfig(model="tiny", data=[str(args.out / "media")], out_dir=str(args.out / "run"), steps=100,
                      max_minutes=args.minutes, batch_size=4, n_blocks=2, warmup_steps=10, lr=2e-3,
                      eval_every=10**9, checkpoint_every=10**9, log_every=5)
    started = time.monotonic()
    run = train(cfg)
    print(f"trained for {time.monotonic() - started:.0f} s -> {run / 'model'}")

    model = ElasticTok.from_pretrained(run / "model")
    c = model.config
    clip = to_model(fit_to_resolution(pan[:2 * c.frames_per_block], c.resolution))[None]
    print(f"\nfixed budgets on a real clip:\n{'tokens per block':>16} | {'share of Mmax':>13} | {'PSNR (dB)':>9}")
    rows = []
    with torch.no_grad():
        for keep in (c.min_tokens, c.tokens_per_block // 4, c.tokens_per_block // 2, c.tokens_per_block):
            recon = model(clip, keep).recon
            rows.append(from_model(recon[0]))
            print(f"{keep:>16} | {keep / c.tokens_per_block:>13.3f} | {psnr(recon, clip).item():>9.2f}")
    grid = torch.cat([from_model(clip[0])] + rows, dim=2)  # original, then each budget, side by side
    write_image(args.out / "budgets.png", grid[0])

    # Adaptive: the fewest tokens per block that reach 95% of what all tokens reach on the first block.
    with torch.no_grad():
        full_mse = model(clip[:, :c.frames_per_block]).mse.item()
        target = f"mse:{full_mse * 1.05:.5f}"
        encoded = model.tokenize(str(args.out / "media" / "pan.mp4"), target)
    print(f"\nadaptive, target {target} per block:\n{'block':>5} | {'tokens':>6} | {'PSNR (dB)':>9}")
    for k, (n, score) in enumerate(zip(encoded.counts.tolist(), encoded.scores.tolist())):
        print(f"{k:>5} | {n:>6} | {10 * np.log10(4 / score):>9.2f}")
    used, total = int(encoded.counts.sum()), encoded.n_blocks * c.tokens_per_block
    print(f"used {used} of {total} tokens ({100 * used / total:.0f}%): {total / used:.2f}x fewer than all tokens")
    summary = reconstruct_side_by_side(model, str(args.out / "media" / "pan.mp4"), args.out / "side_by_side.mp4",
                                       Target.parse(target), progress=False)
    print(summary)
    print(f"\nwrote {args.out / 'budgets.png'} (left to right: original, then each fixed budget), "
          f"{args.out / 'side_by_side.mp4'} and {args.out / 'side_by_side_tokens.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
