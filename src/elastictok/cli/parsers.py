"""The command line's arguments, one function per command; ``main.py`` holds what each command does."""

from __future__ import annotations

import argparse
import math

from ..media.limits import FPS_RANGE, is_valid_fps
from ..models.pretrained import DEFAULT_MODEL
from ..tokenization.options import DEFAULT_REPORT_TARGETS, DEFAULT_TARGET, SEARCHES
from ..utils.cores import available_cores


def _fps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not is_valid_fps(value):
        raise argparse.ArgumentTypeError(f"fps must be a number in {FPS_RANGE}, got {text!r}")
    return value


def _output_path(text: str) -> str:
    """An output path names something: an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name the output")
    return text


def _positive_int(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _workers(text: str) -> int:
    cores = available_cores()
    if not text.isdecimal() or not 1 <= int(text) <= cores:
        raise argparse.ArgumentTypeError(f"workers must be a whole number in [1, {cores}] (the cores this process "
                                         f"may use), got {text!r}")
    return int(text)


def _window(text: str) -> int | str:
    if text == "model":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"expected a number of blocks in [1, 2^31) or 'model', got {text!r}")
    return value


def _add_model_args(p: argparse.ArgumentParser, model_default: str | None = DEFAULT_MODEL) -> None:
    which = "%(default)s" if model_default else "the bundled model the token file names"
    p.add_argument("--model", default=model_default, help=f"a save_pretrained directory or a bundled model name "
                                                         f"(default: {which})")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="compute precision (default: %(default)s)")
    p.add_argument("--window", type=_window, default="model", help="context blocks kept in the cache, or 'model' for "
                   "the model's own config.window, the context it was trained for (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_target_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", default=DEFAULT_TARGET, metavar="METRIC:VALUE",
                       help="per-block quality to meet: mse:0.03, psnr:30 or ssim:0.95 (default: %(default)s, about "
                            "23 dB: the default 64x64 model keeps 45%% of its tokens for it on its sample clip; "
                            "mse:0.05, 19 dB, keeps a fifth; the paper used mse:0.001 to 0.007 at 256x256)")
    group.add_argument("--tokens", type=int, metavar="N", help="exactly N tokens per block (no search)")
    group.add_argument("--budget", type=int, metavar="N", help="at most N tokens for the whole input")
    p.add_argument("--search", choices=list(SEARCHES), default="binary",
                   help="how to find the fewest tokens per block (default: %(default)s)")
    p.add_argument("--length-head", metavar="FILE", help="for --search regression: a trained length head "
                   "(default: the model's own length_head.safetensors, if it has one)")
    p.add_argument("--fps", type=_fps, help="resample videos to this frame rate first")
    p.add_argument("--fit", choices=["crop", "pad"], default="crop",
                   help="fit frames to the model's resolution by centre crop or padding (default: %(default)s)")


def _add_sampler_args(p: argparse.ArgumentParser, decoding: bool = False) -> None:
    """--steps, --guidance, --seed: the sampler of a family whose decoder samples from noise (FlexTok)."""
    default = "what the token file records, else the model's config.json" if decoding else "the model's config.json"
    group = p.add_argument_group("sampler", "for a family whose decoder samples from noise (FlexTok); ElasticTok "
                                 "decodes in one pass and refuses these")
    group.add_argument("--steps", type=int, metavar="N", help=f"Euler steps per block, 1 to 1000 (default: {default})")
    group.add_argument("--guidance", type=float, metavar="G", help=f"classifier-free guidance scale, 1 for none "
                       f"(default: {default})")
    group.add_argument("--seed", type=int, metavar="S", help=f"seed of each block's starting noise "
                       f"(default: {default})")


def _add_encode(sub, commands: dict) -> None:
    p = sub.add_parser("encode", help="tokenize images and videos into .etok files",
                       description="Tokenize each input with the fewest tokens per block that meet the target; "
                                   "writes DIR/<name>.etok per input.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files")
    p.add_argument("-o", "--output", required=True, type=_output_path, metavar="DIR", help="output directory")
    _add_model_args(p)
    _add_target_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per input on stdout")
    _add_workers_arg(p)
    _add_sampler_args(p)
    p.set_defaults(func=commands["encode"])


def _add_workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_workers, default=1, help="processes tokenizing inputs side by side, each with "
                   "an equal share of the cores (default: %(default)s, every core in this process)")


def _add_decode(sub, commands: dict) -> None:
    p = sub.add_parser("decode", help="decode an .etok file to a video or image",
                       description="Decode tokens back to a video (.mp4) or image (.png/.jpg).")
    p.add_argument("tokens_file", metavar="FILE.etok")
    p.add_argument("-o", "--output", required=True, type=_output_path,
                   metavar="OUT", help="OUT.mp4 for videos, OUT.png for images")
    p.add_argument("--size", choices=["model", "source"], default="model",
                   help="the model's frame size, or the source's (the crop or padding undone) (default: %(default)s)")
    _add_model_args(p, model_default=None)
    _add_sampler_args(p, decoding=True)
    p.set_defaults(func=commands["decode"])


def _add_reconstruct(sub, commands: dict) -> None:
    p = sub.add_parser("reconstruct", help="side-by-side original and reconstruction, with token counts",
                       description="Tokenize INPUT and write OUT with the original and the reconstruction side by "
                                   "side (tokens per block drawn on each frame), plus OUT's name with "
                                   "_tokens.png: a plot of tokens per block over time.")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("-o", "--output", required=True, type=_output_path,
                   metavar="OUT", help="OUT.mp4 (or OUT.png for an image)")
    _add_model_args(p)
    _add_target_args(p)
    _add_sampler_args(p)
    p.set_defaults(func=commands["reconstruct"])


def _add_tokenize_corpus(sub, commands: dict) -> None:
    p = sub.add_parser("tokenize-corpus", help="tokenize a corpus into WebDataset shards of .etok files",
                       description="Tokenize every image and video under SRC into DST/tokens-NNNNNN.tar. Runs under "
                                   "plain python or torchrun (each rank takes its shards); finished shards are "
                                   "skipped when rerun after a crash.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="folders or files")
    p.add_argument("destination", metavar="DST", type=_output_path, help="output folder")
    p.add_argument("--shard-size", type=_positive_int, default=100, help="inputs per shard (default: %(default)s)")
    _add_workers_arg(p)
    _add_model_args(p)
    _add_target_args(p)
    _add_sampler_args(p)
    p.set_defaults(func=commands["tokenize-corpus"])


def _add_eval(sub, commands: dict) -> None:
    p = sub.add_parser("eval", help="how good is a model at each bit rate? adaptive, fixed lengths, codecs",
                       description="Measure a model on the inputs: adaptive at each threshold, at fixed lengths, "
                                   "and beside H.264 and JPEG on the same frames at the same bits; with --baseline, "
                                   "also fixed-length baselines of any family and token grid, compared at equal "
                                   "bits (the paper's Fig. 4 and the saving). Writes DIR/report.json, summary.md "
                                   "and plots.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="held-out images and videos")
    p.add_argument("--baseline", nargs="+", default=[], metavar="B",
                   help="fixed-length baseline model directories (several: the best at each bit rate counts)")
    p.add_argument("--thresholds", metavar="T,T,...", help="comma-separated metric:value thresholds (default: "
                   "PSNR at the 10/25/50/75/90%% quantiles of the model's own all-token block PSNR on the inputs)")
    p.add_argument("--fractions", default="0.0625,0.125,0.25,0.375,0.5,0.75,1",
                   help="fixed token shares at which every model is measured (default: %(default)s)")
    p.add_argument("--search", choices=["binary", "full", "batched"], default="binary")
    p.add_argument("-o", "--out", default="eval", metavar="DIR", type=_output_path,
                   help="output folder (default: %(default)s)")
    p.add_argument("--workers", type=_workers, default=1, help="processes measuring side by side (each model's fixed "
                   "lengths, each threshold, the codecs), each with an equal share of the threads (default: "
                   "%(default)s, all in this process); the numbers are those of one process on that share")
    _add_model_args(p)
    p.set_defaults(func=commands["eval"])


def _add_report(sub, commands: dict) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page to look at a tokenization",
                       description="Tokenize each INPUT at every target and write one HTML file (media embedded, "
                                   "no network needed) with the original and reconstruction playing in sync, a "
                                   "switch between targets, tokens and PSNR per block over time (click to seek) and "
                                   "a per-block table. With a threshold among the targets, also the eval measurement "
                                   "(Fig. 4, rate-distortion against H.264 and JPEG, summary table); with --baseline, "
                                   "each baseline at the same bits.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images and videos")
    p.add_argument("-o", "--output", required=True, type=_output_path, metavar="OUT.html", help="the page to write")
    p.add_argument("--baseline", nargs="+", default=[], metavar="B", help="fixed-length baseline model directories")
    p.add_argument("--thresholds", default=DEFAULT_REPORT_TARGETS, metavar="T,T,...",
                   help="targets to switch between: mse:0.03, psnr:25, ssim:0.9, tokens:N, tokens:all, budget:N "
                        "(default: %(default)s)")
    p.add_argument("--fractions", default="0.0625,0.125,0.25,0.375,0.5,0.75,1",
                   help="fixed token shares measured for the eval plots (default: %(default)s)")
    p.add_argument("--search", choices=["binary", "full", "batched"], default="binary")
    _add_model_args(p)
    p.set_defaults(func=commands["report"])


def _add_data(sub, commands: dict) -> None:
    p = sub.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser("shard", help="pack a folder of images and videos into WebDataset tar shards",
                            description="Pack images and videos under SRC into DST/shard-NNNNNN.tar (WebDataset "
                                        "layout): videos cut into clips, everything resized to a short side.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="folders or files")
    p.add_argument("destination", metavar="DST", type=_output_path, help="output folder")
    p.add_argument("--shard-size", type=_positive_int, default=1000, help="samples per shard (default: %(default)s)")
    p.add_argument("--clip-frames", type=_positive_int, default=32, help="frames per video clip (default: %(default)s)")
    p.add_argument("--short-side", type=_positive_int, default=256, help="resize so the short side is at most this "
                                                               "(default: %(default)s)")
    p.add_argument("--fps", type=_fps, help="resample videos to this frame rate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=commands["data shard"])


def _add_train_length_head(sub, commands: dict) -> None:
    p = sub.add_parser("train-length-head", help="train the one-pass length predictor for --search regression",
                       description="Record each block's MSE at every 8th token count on INPUT files, then fit a "
                                   "small head that predicts that curve in one pass; one head serves every mse: "
                                   "and psnr: threshold. Save it as length_head.safetensors in a model's "
                                   "directory to make it that model's default.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files to learn from")
    p.add_argument("-o", "--output", required=True, type=_output_path,
                   metavar="FILE", help="where to write the head (.safetensors)")
    p.add_argument("--threshold", default=DEFAULT_TARGET, metavar="METRIC:VALUE",
                   help="mse: or psnr: target whose search sets each block's context, and the one --eval scores "
                        "(default: %(default)s)")
    p.add_argument("--eval", nargs="+", metavar="INPUT", help="held-out files: compare the head with a search")
    p.add_argument("--steps", type=_positive_int, default=2000, help="optimiser steps (default: %(default)s)")
    _add_model_args(p)
    p.set_defaults(func=commands["train-length-head"])


def _add_train(sub, commands: dict) -> None:
    p = sub.add_parser("train", help="train a model on a folder of images and videos, or from a YAML config",
                       description="Train an ElasticTok model (or its fixed-length baseline): on folders of images "
                                   "and videos (--data DIR, --preset, --minutes, -o DIR), or from a YAML config "
                                   "(--config FILE; the flags override its fields).")
    p.add_argument("--config", help="training config, e.g. configs/tiny.yaml (default: the TrainConfig defaults)")
    p.add_argument("--data", nargs="+", metavar="DIR", help="folders or files of images and videos, or shards made "
                   "by `elastictok data shard`")
    p.add_argument("--preset", help="the model to train: default, tiny, small, micro, official-fsq-200m ... "
                   "(default: the config's, tiny)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoints/last.pt")
    p.add_argument("--steps", type=int, help="override the number of optimiser steps")
    p.add_argument("--minutes", "--max-minutes", dest="max_minutes", type=float, help="a time budget: the "
                   "learning rate decays over it, and training stops (with a checkpoint) when it is spent")
    p.add_argument("-o", "--out-dir", type=_output_path, metavar="DIR", help="the run directory (default: the "
                   "config's, runs/tiny)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the config's, auto)")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=commands["train"])


def _add_convert_official(sub, commands: dict) -> None:
    p = sub.add_parser("convert-official", help="convert an original-release checkpoint",
                       description="Convert a checkpoint of the original JAX release (its `params` file) "
                                   "into a save_pretrained directory. Needs no JAX.")
    p.add_argument("params", help="the original checkpoint (streaming msgpack `params` file)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--preset", choices=["official-fsq-200m", "official-vae-200m"], help="the model it holds")
    group.add_argument("--official-config", help="JSON of the original's config fields (for other sizes)")
    p.add_argument("-o", "--output", required=True, type=_output_path, help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=commands["convert-official"])


def add_subcommands(parser: argparse.ArgumentParser, commands: dict) -> None:
    """Every command's subparser; ``commands`` maps a command name to the function that runs it."""
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_encode(sub, commands)
    _add_decode(sub, commands)
    _add_reconstruct(sub, commands)
    _add_tokenize_corpus(sub, commands)
    _add_eval(sub, commands)
    _add_report(sub, commands)
    _add_data(sub, commands)
    _add_train_length_head(sub, commands)
    _add_train(sub, commands)
    _add_convert_official(sub, commands)
