"""Copy the trained default model into the package and its baselines into baselines/, in float16.

    python scripts/ship_default.py [--runs runs]

Reads RUNS/default/model and the fixed-length baselines RUNS/default-fixed-0.25, -fixed-0.5 and
-full (written by `elastictok train --config configs/default*.yaml`) and writes
src/elastictok/weights/default and baselines/default-*/ (config.json + model.safetensors, float16 weights; loading casts them
back to float32).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from elastictok import ElasticTok
from elastictok.training.loop import TrainConfig

ROOT = Path(__file__).parents[1]
DESTINATIONS = {
    "default": ROOT / "src/elastictok/weights/default",
    "default-fixed-0.25": ROOT / "baselines/default-fixed-0.25",
    "default-fixed-0.5": ROOT / "baselines/default-fixed-0.5",
    "default-full": ROOT / "baselines/default-full",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    for run, destination in DESTINATIONS.items():
        model = ElasticTok.from_pretrained(args.runs / run / "model")
        # The inference window is the context trained on (TrainConfig.model_config), also for runs
        # written before config.window existed.
        model.config.window = TrainConfig.from_yaml(args.runs / run / "train_config.yaml").model_config().window
        model.save_pretrained(destination, dtype=torch.float16)
        size = (destination / "model.safetensors").stat().st_size / 2**20
        print(f"{args.runs / run / 'model'} -> {destination} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
