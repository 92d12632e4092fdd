"""Copy trained runs into the package (the bundled models) and baselines/ (their baselines), in float16.

    python scripts/ship_default.py [RUN ...] [--runs runs]

Each RUN is a run folder name under --runs (written by `elastictok train --config configs/RUN.yaml`);
without any, all of them: default-cycle3 (the bundled `default`), flextok-tiny-flow (the bundled `flextok`),
default-narrow-cycle2 (the bundled `default-narrow`: the default at half width, trained with Muon, in cycles),
default-fixed-0.25, default-fixed-0.5 and default-full (the default's fixed-length baselines), and
narrow-long-muon-full, narrow-long-muon-fixed-0.25 and narrow-long-muon-fixed-0.5 (default-narrow's full-length and
fixed-length baselines: the same recipe and minutes as its first cosine). Writes
config.json + model.safetensors with float16 weights (loading casts them back to float32) and the run's
training.json, and sets a bundled FlexTok's default sampler (SAMPLERS).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from elastictok.models.registry import from_pretrained
from elastictok.training.config import TrainConfig

ROOT = Path(__file__).parents[1]
DESTINATIONS = {
    "default-cycle3": ROOT / "src/elastictok/weights/default",
    "flextok-tiny-flow": ROOT / "src/elastictok/weights/flextok",
    "default-fixed-0.25": ROOT / "baselines/default-fixed-0.25",
    "default-fixed-0.5": ROOT / "baselines/default-fixed-0.5",
    "default-full": ROOT / "baselines/default-full",
    "default-narrow-cycle2": ROOT / "src/elastictok/weights/default-narrow",
    "narrow-long-muon-full": ROOT / "baselines/default-narrow-full",
    "narrow-long-muon-fixed-0.25": ROOT / "baselines/default-narrow-fixed-0.25",
    "narrow-long-muon-fixed-0.5": ROOT / "baselines/default-narrow-fixed-0.5",
}
# The sampler a bundled FlexTok decodes with by default, from its measurement (benchmarks/flextok_steps.py --shift,
# docs/results/README.md): 25 Euler steps on a grid shifted towards the clean end (sample_shift 0.1) land 1.4 dB
# below the one-step estimate with 0.78 of the source's fine detail; the grid it trained with (shift 2) kept 0.42.
# Each block's one-step estimate, not its sample, is the next block's context: level with decoding blocks alone.
SAMPLERS = {"flextok-tiny-flow": {"steps": 25, "guidance": 1.0, "sample_shift": 0.1, "context_from": "estimate"}}
# The name a bundled model's config carries where its run's preset name would not tell it apart (tokenized
# videos and eval tables show it).
NAMES = {"default-narrow-cycle2": "default-narrow", "narrow-long-muon-full": "default-narrow-full",
         "narrow-long-muon-fixed-0.25": "default-narrow-fixed-0.25",
         "narrow-long-muon-fixed-0.5": "default-narrow-fixed-0.5"}


def training_record(run_dir: Path, destination: Path) -> dict | None:
    """The run's training.json, plus the shipped model's own where the run continued it (``init_from`` is the
    destination): steps and minutes then count every cycle, and ``runs`` lists them in order."""
    record = run_dir / "model" / "training.json"
    if not record.exists():
        return None
    training = {**json.loads(record.read_text()), "runs": [run_dir.name]}
    init_from = TrainConfig.from_yaml(run_dir / "train_config.yaml").init_from
    before = destination / "training.json"
    if init_from and (ROOT / init_from).resolve() == destination.resolve() and before.exists():
        earlier = json.loads(before.read_text())
        if run_dir.name in earlier.get("runs", []):  # shipped before: its record counts this run already
            return earlier
        training["steps"] += earlier["steps"]
        training["minutes"] = round(training["minutes"] + earlier["minutes"], 2)
        training["runs"] = earlier.get("runs", [earlier.get("note", "earlier cycles")]) + training["runs"]
    return training


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="RUN", help=f"any of {', '.join(DESTINATIONS)} (default: all)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(DESTINATIONS))
    if unknown:
        parser.error(f"unknown runs {', '.join(unknown)}; choose from {', '.join(DESTINATIONS)}")
    for run in args.names or DESTINATIONS:
        destination = DESTINATIONS[run]
        model = from_pretrained(args.runs / run / "model")
        # The inference window is the context trained on (TrainConfig.model_config), also for runs
        # written before config.window existed.
        model.config.window = TrainConfig.from_yaml(args.runs / run / "train_config.yaml").model_config().window
        for field, value in SAMPLERS.get(run, {}).items():
            setattr(model.config, field, value)
        model.config.name = NAMES.get(run, model.config.name)
        training = training_record(args.runs / run, destination)
        model.save_pretrained(destination, dtype=torch.float16, training=training)
        size = (destination / "model.safetensors").stat().st_size / 2**20
        print(f"{args.runs / run / 'model'} -> {destination} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
