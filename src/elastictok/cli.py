"""The ``elastictok`` command line. Every user error ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import ElasticTokError


def _train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    cfg = TrainConfig.from_yaml(args.config, steps=args.steps, out_dir=args.out_dir, max_minutes=args.max_minutes,
                                device=args.device, num_workers=args.num_workers)
    if args.no_progress:
        cfg.progress = False
    out = train(cfg, resume=args.resume)
    print(f"model written to {out / 'model'}")


def _convert_official(args: argparse.Namespace) -> None:
    import json

    from .config import ElasticTokConfig
    from .convert import config_from_official, convert_official

    if args.official_config:
        try:
            data = json.loads(Path(args.official_config).read_text())
        except (OSError, ValueError) as exc:
            raise ElasticTokError(f"{args.official_config}: not a readable JSON config ({exc})") from None
        official = data.get("elastic_config", data)
        resolution = data.get("resolution") or official.get("resolution")
        if resolution is None:
            raise ElasticTokError(f"{args.official_config}: says no resolution")
        config = config_from_official(official, resolution, name=Path(args.output).name)
    else:
        config = ElasticTokConfig.from_preset(args.preset)
    model = convert_official(args.params, config, progress=not args.no_progress)
    model.save_pretrained(args.output)
    print(f"converted {sum(p.numel() for p in model.parameters()):,} parameters to {args.output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elastictok",
        description="Adaptive-length tokenization of images and video (ElasticTok).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train an ElasticTok model (or its fixed-length baseline) from a YAML config.")
    p.add_argument("--config", required=True, help="training config, e.g. configs/tiny.yaml")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoints/last.pt")
    p.add_argument("--steps", type=int, help="override the number of optimiser steps")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    p.add_argument("--out-dir", help="override the run directory")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the config's, auto)")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("convert-official", help="convert an original-release checkpoint",
                       description="Convert a checkpoint of the original JAX release (its `params` file) "
                                   "into a save_pretrained directory. Needs no JAX.")
    p.add_argument("params", help="the original checkpoint (streaming msgpack `params` file)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--preset", choices=["official-fsq-200m", "official-vae-200m"], help="the model it holds")
    group.add_argument("--official-config", help="JSON of the original's config fields (for other sizes)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_convert_official)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        args.func(args)
    except ElasticTokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
