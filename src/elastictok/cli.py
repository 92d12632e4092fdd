"""The ``elastictok`` command line. Every user error ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
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


def _load_model(args: argparse.Namespace):
    import torch

    from .model import ElasticTok

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = ElasticTok.from_pretrained(args.model).to(device)
    except RuntimeError as exc:  # e.g. an unavailable device
        raise ElasticTokError(f"cannot load model {args.model!r} on {device}: {str(exc).splitlines()[0]}") from None
    return model


def _target(args: argparse.Namespace):
    from .targets import Target

    if args.tokens is not None:
        return Target(tokens=args.tokens)
    if args.budget is not None:
        return Target(budget=args.budget)
    return Target.parse(args.threshold)


def _autocast(args: argparse.Namespace, model):
    import contextlib

    import torch

    if args.dtype == "fp32":
        return contextlib.nullcontext()
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16)


def _encode(args: argparse.Namespace) -> None:
    import json
    import time

    import torch

    from .metrics import psnr_from_mse
    from .tokenfile import write_etok

    model = _load_model(args)
    target = _target(args)
    length_head = _length_head(args, model)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    codebook = model.quantizer.codebook_size if model.config.bottleneck == "fsq" else 0
    for source in args.inputs:
        started = time.perf_counter()
        with _autocast(args, model):
            encoded = model.tokenize(source, target, search=args.search, window=args.window, fps=args.fps,
                                     fit=args.fit, length_head=length_head,
                                     progress=not args.no_progress and not args.json)
        destination = out_dir / (Path(source).stem + ".etok")
        write_etok(destination, encoded, codebook)
        seconds = time.perf_counter() - started
        counts = encoded.counts.tolist()
        mse = _achieved_mse(model, encoded, source, args) if encoded.metric != "mse" else encoded.scores.mean().item()
        summary = {
            "input": str(source), "output": str(destination), "blocks": encoded.n_blocks,
            "tokens_per_block": counts, "max_tokens_per_block": encoded.max_tokens,
            "mean_tokens_per_block": sum(counts) / len(counts), "total_tokens": sum(counts),
            "mse": mse, "psnr": float(psnr_from_mse(torch.tensor(mse))),
            "metric": encoded.metric, "scores": encoded.scores.tolist(), "passes": encoded.passes,
            "seconds": round(seconds, 3),
        }
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            print(f"{source}: {encoded.n_blocks} blocks, {summary['mean_tokens_per_block']:.1f}/{encoded.max_tokens} "
                  f"tokens per block, PSNR {summary['psnr']:.2f} dB -> {destination}")


def _length_head(args: argparse.Namespace, model):
    if args.search != "regression":
        return None
    if not args.length_head:
        raise ElasticTokError("--search regression needs --length-head FILE (made by elastictok train-length-head)")
    from .length_head import LengthHead
    return LengthHead.load(args.length_head, model)


def _train_length_head(args: argparse.Namespace) -> None:
    from .length_head import train_length_head
    from .targets import Target

    model = _load_model(args)
    target = Target.parse(args.threshold)
    if target.threshold is None:
        raise ElasticTokError("a length head learns a quality threshold such as mse:0.003")
    head, report = train_length_head(model, args.inputs, target, search=args.label_search, steps=args.steps,
                                     eval_inputs=args.eval, window=args.window, progress=not args.no_progress)
    head.save(args.output)
    line = f"trained on {report.blocks} blocks (loss {report.train_loss:.4f}) -> {args.output}"
    if report.disagreement is not None:
        line += (f"; held out: differs from full search on {100 * report.disagreement:.1f}% of blocks, "
                 f"mean |error| {report.mean_abs_error:.1f} tokens")
    print(line)


def _achieved_mse(model, encoded, source, args) -> float:
    """Mean per-block MSE of the reconstruction, for targets scored in another metric."""
    from .data import to_model
    from .metrics import mse_per_block
    from .tokenizer import decoded_with_sources

    errors = [mse_per_block(recon[None], to_model(block)[None].to(recon.device), len(block)).item()
              for recon, block in decoded_with_sources(model, encoded, source, args.window, args.fps, args.fit)]
    return sum(errors) / len(errors)


def _decode(args: argparse.Namespace) -> None:
    from .data import VideoWriter, from_model, write_image
    from .tokenfile import read_etok
    from .tokenizer import iter_decode

    encoded = read_etok(args.tokens_file)
    model = _load_model(args)
    output = Path(args.output)
    with _autocast(args, model):
        if encoded.info.is_image:
            write_image(output, from_model(model.detokenize(encoded)))
        else:
            if output.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
                raise ElasticTokError(f"{output}: these tokens hold a video; write .mp4")
            remaining = encoded.info.frames or None
            with VideoWriter(output, encoded.info.fps or 24) as writer:
                for block in iter_decode(model, encoded, args.window):
                    frames = from_model(block)
                    if remaining is not None:
                        frames, remaining = frames[:remaining], remaining - len(frames[:remaining])
                    writer.write(frames)
    print(f"wrote {output}")


def _reconstruct(args: argparse.Namespace) -> None:
    from .visualize import reconstruct_side_by_side

    model = _load_model(args)
    with _autocast(args, model):
        summary = reconstruct_side_by_side(model, args.input, args.output, _target(args), search=args.search,
                                           window=args.window, fps=args.fps, fit=args.fit,
                                           progress=not args.no_progress)
    print(summary)


def _data_shard(args: argparse.Namespace) -> None:
    from .shards import build_shards

    summary = build_shards(args.sources, args.destination, shard_size=args.shard_size, clip_frames=args.clip_frames,
                           short_side=args.short_side, fps=args.fps, progress=not args.no_progress)
    print(f"wrote {summary.shards} shards to {args.destination}: {summary.clips} video clips, {summary.images} images"
          f", {summary.skipped} unreadable files skipped")


def _tokenize_corpus(args: argparse.Namespace) -> None:

    from .corpus import tokenize_corpus
    from .distributed import setup

    world, _ = setup(args.device or "auto")
    model = _load_model(args).eval()
    summary = tokenize_corpus(model, args.sources, args.destination, _target(args), search=args.search,
                              shard_size=args.shard_size, window=args.window, progress=not args.no_progress)
    if world.main:
        print(summary.line())


def _eval(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_models, summary_table, write_report
    from .model import ElasticTok
    from .targets import Target

    model = _load_model(args).eval()
    device = next(model.parameters()).device
    baselines = [ElasticTok.from_pretrained(b).to(device).eval() for b in args.baseline]
    thresholds = [Target.parse(t) for t in args.thresholds.split(",")]
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise ElasticTokError(f"--fractions must be comma-separated numbers, got {args.fractions!r}") from None
    with _autocast(args, model):
        report = evaluate_models(model, baselines, args.inputs, thresholds, fractions, search=args.search,
                                 window=args.window, progress=not args.no_progress, baseline_names=args.baseline)
    files = write_report(report, args.out)
    print(summary_table(report))
    print("wrote " + ", ".join(str(f) for f in files))


def _report(args: argparse.Namespace) -> None:
    from .model import ElasticTok
    from .report import build_report, parse_fractions, parse_targets, summary_line, write_report_html
    from .targets import Target

    if Path(args.output).suffix.lower() not in (".html", ".htm"):
        raise ElasticTokError(f"{args.output}: the report is an HTML page; name it .html")
    fractions = parse_fractions(args.fractions)
    model = _load_model(args).eval()
    targets = parse_targets(args.thresholds, model.config.tokens_per_block)
    device = next(model.parameters()).device
    baselines = [ElasticTok.from_pretrained(b).to(device).eval() for b in args.baseline]
    default = Target.parse(DEFAULT_THRESHOLD)
    with _autocast(args, model):
        report = build_report(model, args.inputs, targets, baselines, baseline_names=[Path(b).name for b in args.baseline],
                              fractions=fractions, search=args.search, window=args.window,
                              progress=not args.no_progress, selected=default if default in targets else None)
    output = write_report_html(report, args.output)
    print(summary_line(report, output))


def _window(text: str) -> int | str:
    if text == "model":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of blocks >= 1 or 'model', got {text!r}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="a save_pretrained directory or a bundled model name "
                                                      "(default: %(default)s)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="compute precision (default: %(default)s)")
    p.add_argument("--window", type=_window, default="model", help="context blocks kept in the cache, or 'model' for "
                   "the model's own config.window, the context it was trained for (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


DEFAULT_THRESHOLD = "mse:0.03"  # what the bundled default model meets on most held-out video blocks
DEFAULT_REPORT_TARGETS = "mse:0.02,mse:0.03,mse:0.05,tokens:all"


def _add_target_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", default=DEFAULT_THRESHOLD, metavar="METRIC:VALUE",
                       help="per-block quality to meet: mse:0.03, psnr:30 or ssim:0.95 (default: %(default)s, about "
                            "21 dB, suited to the bundled 64x64 model; the paper used mse:0.001 to 0.007 at 256x256)")
    group.add_argument("--tokens", type=int, metavar="N", help="exactly N tokens per block (no search)")
    group.add_argument("--budget", type=int, metavar="N", help="at most N tokens for the whole input")
    p.add_argument("--search", choices=["binary", "full", "batched", "regression"], default="binary",
                   help="how to find the fewest tokens per block (default: %(default)s)")
    p.add_argument("--length-head", metavar="FILE", help="for --search regression: a trained length head")
    p.add_argument("--fps", type=float, help="resample videos to this frame rate first")
    p.add_argument("--fit", choices=["crop", "pad"], default="crop",
                   help="fit frames to the model's resolution by centre crop or padding (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elastictok",
        description="Adaptive-length tokenization of images and video (ElasticTok).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("encode", help="tokenize images and videos into .etok files",
                       description="Tokenize each input with the fewest tokens per block that meet the target; "
                                   "writes DIR/<name>.etok per input.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    _add_model_args(p)
    _add_target_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per input on stdout")
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="decode an .etok file to a video or image",
                       description="Decode tokens back to a video (.mp4) or image (.png/.jpg).")
    p.add_argument("tokens_file", metavar="FILE.etok")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.mp4 for videos, OUT.png for images")
    _add_model_args(p)
    p.set_defaults(func=_decode)

    p = sub.add_parser("reconstruct", help="side-by-side original and reconstruction, with token counts",
                       description="Tokenize INPUT and write OUT with the original and the reconstruction side by "
                                   "side (tokens per block drawn on each frame), plus OUT's name with "
                                   "_tokens.png: a plot of tokens per block over time.")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.mp4 (or OUT.png for an image)")
    _add_model_args(p)
    _add_target_args(p)
    p.set_defaults(func=_reconstruct)

    p = sub.add_parser("tokenize-corpus", help="tokenize a corpus into WebDataset shards of .etok files",
                       description="Tokenize every image and video under SRC into DST/tokens-NNNNNN.tar. Runs under "
                                   "plain python or torchrun (each rank takes its shards); finished shards are "
                                   "skipped when rerun after a crash.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="folders or files")
    p.add_argument("destination", metavar="DST", help="output folder")
    p.add_argument("--shard-size", type=int, default=100, help="inputs per shard (default: %(default)s)")
    _add_model_args(p)
    _add_target_args(p)
    p.set_defaults(func=_tokenize_corpus)

    p = sub.add_parser("eval", help="fewer tokens at equal quality? elastic model vs fixed-length baseline",
                       description="Compare an ElasticTok model (adaptive) with a fixed-length baseline of the same "
                                   "architecture on the same inputs: the paper's Fig. 4, the token saving, "
                                   "rate-distortion and tokens over time. Writes OUT/report.json and plots.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="held-out images and videos")
    p.add_argument("--baseline", required=True, nargs="+", metavar="B",
                   help="fixed-length baseline model directories (several: the best at each length counts)")
    p.add_argument("--thresholds", default="mse:0.001,mse:0.003,mse:0.007", help="comma-separated "
                   "(default: %(default)s)")
    p.add_argument("--fractions", default="0.0625,0.125,0.25,0.375,0.5,0.75,1",
                   help="fixed token shares at which both models are measured (default: %(default)s)")
    p.add_argument("--search", choices=["binary", "full", "batched"], default="binary")
    p.add_argument("--out", default="eval", metavar="DIR", help="output folder (default: %(default)s)")
    _add_model_args(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("report", help="one self-contained HTML page to look at a tokenization",
                       description="Tokenize each INPUT at every target and write one HTML file (media embedded, "
                                   "no network needed) with the original and reconstruction playing in sync, a "
                                   "switch between targets, tokens and PSNR per block over time (click to seek) and "
                                   "a per-block table. With --baseline, also each baseline at the same tokens and "
                                   "the eval measurement (Fig. 4, rate-distortion, summary table).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images and videos")
    p.add_argument("-o", "--output", required=True, metavar="OUT.html", help="the page to write")
    p.add_argument("--baseline", nargs="+", default=[], metavar="B", help="fixed-length baseline model directories")
    p.add_argument("--thresholds", default=DEFAULT_REPORT_TARGETS, metavar="T,T,...",
                   help="targets to switch between: mse:0.03, psnr:25, ssim:0.9, tokens:N, tokens:all, budget:N "
                        "(default: %(default)s)")
    p.add_argument("--fractions", default="0.0625,0.125,0.25,0.375,0.5,0.75,1",
                   help="with --baseline: fixed token shares measured for the eval plots (default: %(default)s)")
    p.add_argument("--search", choices=["binary", "full", "batched"], default="binary")
    _add_model_args(p)
    p.set_defaults(func=_report)

    p = sub.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser("shard", help="pack a folder of images and videos into WebDataset tar shards",
                            description="Pack images and videos under SRC into DST/shard-NNNNNN.tar (WebDataset "
                                        "layout): videos cut into clips, everything resized to a short side.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="folders or files")
    p.add_argument("destination", metavar="DST", help="output folder")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: %(default)s)")
    p.add_argument("--clip-frames", type=int, default=32, help="frames per video clip (default: %(default)s)")
    p.add_argument("--short-side", type=int, default=256, help="resize so the short side is at most this "
                                                               "(default: %(default)s)")
    p.add_argument("--fps", type=float, help="resample videos to this frame rate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_data_shard)

    p = sub.add_parser("train-length-head", help="train the one-pass length predictor for --search regression",
                       description="Search token counts on INPUT files, then fit a small head that predicts them "
                                   "from the encoder's features in one pass.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files to learn from")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the head (.safetensors)")
    p.add_argument("--threshold", default=DEFAULT_THRESHOLD, metavar="METRIC:VALUE", help="the target it learns "
                                                                                     "(default: %(default)s)")
    p.add_argument("--label-search", choices=["binary", "full"], default="binary", help="labels from this search")
    p.add_argument("--eval", nargs="+", metavar="INPUT", help="held-out files: report disagreement with full search")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps (default: %(default)s)")
    _add_model_args(p)
    p.set_defaults(func=_train_length_head)

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
        code = 0
    except ElasticTokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if "torch" in sys.modules and _leave_process_group():
        # gloo's teardown can abort at interpreter exit; leave now that the group is destroyed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _leave_process_group() -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    from .distributed import teardown
    teardown()
    return True


if __name__ == "__main__":
    sys.exit(main())
