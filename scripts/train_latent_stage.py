"""Train FlexTok's latent input stage alone (a causal convolutional video autoencoder, MSE) and print the
held-out PSNR of its reconstructions.

    OMP_NUM_THREADS=1 python scripts/train_latent_stage.py --data data/corpus2/train \\
        --eval-data data/corpus2/heldout/Megamind.avi data/corpus2/heldout/tree.avi \\
        data/corpus2/heldout/vtest_tail.mp4 data/corpus2/heldout/kivy_cityCC0.mp4 \\
        data/corpus2/heldout/mecavideo_balle-jbart.mp4 \\
        --out src/elastictok/weights/stages/video-ae --minutes 15

Frames come as the trainer makes them for --model's resolution and block length (a FlexTok preset), one
block per clip, with the trainer's warmup and cosine over --steps or --minutes, whichever ends first. The
folder it writes (stage.safetensors + stage.json) is what a training config's `stage_from` loads into a
FlexTok with `input_stage: latent` and the same --channels, --factors and --width.
"""

from __future__ import annotations

import argparse
import logging
import sys

from elastictok.errors import ElasticTokError
from elastictok.models.flextok import LatentStage
from elastictok.training.config import TrainConfig
from elastictok.training.stage import train_stage


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True, help="folders or files of training images and videos")
    parser.add_argument("--eval-data", nargs="*", default=[], help="held-out videos: PSNR of their reconstructions")
    parser.add_argument("--out", required=True, help="folder to write stage.safetensors and stage.json into")
    parser.add_argument("--minutes", type=float, default=15.0, help="time budget (default 15)")
    parser.add_argument("--steps", type=int, default=100000, help="step budget (default: the minutes end the run)")
    parser.add_argument("--batch", type=int, default=8, help="clips of one block per step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50, help="warmup steps (default 50)")
    parser.add_argument("--channels", type=int, default=8, help="latent channels (default 8)")
    parser.add_argument("--factors", type=int, nargs=2, default=[2, 4], metavar=("TEMPORAL", "SPATIAL"),
                        help="downsampling in time and in space (default 2 4)")
    parser.add_argument("--width", type=int, default=64, help="convolution width (default 64)")
    parser.add_argument("--model", default="flextok-tiny", help="FlexTok preset giving the frame size and block length")
    parser.add_argument("--image-fraction", type=float, default=0.3, help="share of batches made of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("elastictok").setLevel(logging.INFO)
    stage_fields = {"input_stage": "latent", "stage_channels": args.channels, "stage_factors": tuple(args.factors),
                    "stage_width": args.width, "patch_size": (1, 1, 1)}  # the flow's patches play no part here
    try:
        cfg = TrainConfig.from_fields(dict(
            model=args.model, model_overrides=stage_fields, data=args.data, eval_data=args.eval_data,
            out_dir=args.out, steps=args.steps, max_minutes=args.minutes, batch_size=args.batch, n_blocks=1,
            image_fraction=args.image_fraction, lr=args.lr, warmup_steps=args.warmup, bf16=False, log_every=25,
            seed=args.seed, device=args.device))
        run = train_stage(LatentStage.from_config(cfg.model_config()), cfg, args.out)
    except ElasticTokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {run.steps} steps in {run.minutes} min on {run.device}, training MSE {run.mse:.5f}, "
          f"latent scale {run.scale:.3f}")
    if run.held_out_psnr is not None:
        print(f"held-out PSNR of the reconstructions: {run.held_out_psnr:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
