"""The ``elastictok`` command line: parse arguments, call the library, print. Every user error ends
in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from ..errors import ElasticTokError
from .parsers import add_subcommands


# ---- commands: each reads its arguments, calls one library function and prints ---------------------------------
def _train(args: argparse.Namespace) -> None:
    from ..training.config import TrainConfig
    from ..training.loop import train

    if not args.config and not args.data:
        raise ElasticTokError("train needs --data DIR (folders of images and videos) or --config FILE")
    flags = dict(data=args.data, model=args.preset, steps=args.steps, out_dir=args.out_dir,
                 max_minutes=args.max_minutes, device=args.device, num_workers=args.num_workers)
    cfg = TrainConfig.from_yaml(args.config, **flags) if args.config else TrainConfig.from_fields({}, **flags)
    if args.no_progress:
        cfg.progress = False
    out = train(cfg, resume=args.resume)
    print(f"model written to {out / 'model'}")


def _convert_official(args: argparse.Namespace) -> None:
    from ..models.elastictok.config import ElasticTokConfig
    from ..models.elastictok.convert import config_from_official_file, convert_official

    if args.official_config:
        config = config_from_official_file(args.official_config, name=Path(args.output).name)
    else:
        config = ElasticTokConfig.from_preset(args.preset)
    model = convert_official(args.params, config, progress=not args.no_progress)
    model.save_pretrained(args.output)
    print(f"converted {sum(p.numel() for p in model.parameters()):,} parameters to {args.output}")


def _load_model(args: argparse.Namespace, name: str | None = None):
    from ..models.registry import from_pretrained
    from ..utils.runtime import resolve_device

    name = name or args.model
    device = resolve_device(args.device)
    try:
        return from_pretrained(name).to(device)
    except RuntimeError as exc:  # e.g. an unavailable device
        raise ElasticTokError(f"cannot load model {name!r} on {device}: {str(exc).splitlines()[0]}") from None


def _target(args: argparse.Namespace):
    from ..tokenization.targets import Budget, TokenCount, parse_target

    if args.tokens is not None:
        return TokenCount(args.tokens)
    if args.budget is not None:
        return Budget(args.budget)
    return parse_target(args.threshold)


def _options(args: argparse.Namespace, model, progress: bool = True):
    """The TokenizeOptions the target arguments describe."""
    from ..tokenization.options import TokenizeOptions

    length_head = None  # --search regression without --length-head: the model's own
    if args.length_head and args.search != "regression":
        raise ElasticTokError("--length-head is read by --search regression only; add it, or drop --length-head")
    if args.length_head:
        from ..tokenization.length_head import LengthHead

        length_head = LengthHead.load(args.length_head, model)
    options = TokenizeOptions(search=args.search, window=args.window, fps=args.fps, fit=args.fit,
                              length_head=length_head, progress=progress and not args.no_progress,
                              **_sampler_settings(args))
    options.resolve_sampler(model)  # a family without a sampler refuses --steps at once, not once per input
    return options


def _sampler_settings(args: argparse.Namespace) -> dict:
    """--steps, --guidance, --seed as given (None: not given)."""
    return {"steps": args.steps, "guidance": args.guidance, "seed": args.seed}


def _autocast(args: argparse.Namespace, model):
    import contextlib

    import torch

    from ..utils.runtime import warn_if_slow_bf16

    if args.dtype == "fp32":
        return contextlib.nullcontext()
    device_type = next(model.parameters()).device.type
    warn_if_slow_bf16(device_type)
    return torch.autocast(device_type, dtype=torch.bfloat16)


def _encode(args: argparse.Namespace) -> None:
    import json

    from ..tokenization.files import encode_files
    from ..utils.console import counted
    from ..utils.fileio import check_output_dir

    check_output_dir(args.output)
    model = _load_model(args)
    target, options = _target(args), _options(args, model, progress=not args.json)

    def show(summary: dict) -> None:
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            blocks = counted(summary["blocks"], "block")
            print(f"{summary['input']}: {blocks}, {summary['mean_tokens_per_block']:.1f}/"
                  f"{summary['max_tokens_per_block']} tokens per block, PSNR {summary['psnr']:.2f} dB, "
                  f"{summary['blocks_met']} of {blocks} met {summary['target']} -> {summary['output']}")

    with _autocast(args, model):
        encode_files(model, args.inputs, args.output, target, options, each=show, workers=args.workers,
                     bf16=args.dtype == "bf16")


def _train_length_head(args: argparse.Namespace) -> None:
    from ..models.files import CONFIG_NAME, WEIGHTS_NAME
    from ..models.pretrained import resolve_model_path
    from ..tokenization.targets import parse_target
    from ..training.length_head import train_length_head
    from ..utils.fileio import check_output_file

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise ElasticTokError(f"-o {output}: a length head is written as a .safetensors file")
    weights = [resolve_model_path(args.model) / name for name in (WEIGHTS_NAME, CONFIG_NAME)]
    check_output_file(output, *args.inputs, *(args.eval or []), *weights)  # before any work
    model = _load_model(args)
    target = parse_target(args.threshold)
    head, report = train_length_head(model, args.inputs, target, steps=args.steps, eval_inputs=args.eval,
                                     window=args.window, progress=not args.no_progress)
    head.save(args.output)
    line = f"trained on {report.blocks} blocks (loss {report.train_loss:.4f}) -> {args.output}"
    if report.off is not None:
        line += (f"; held out at {target}: {100 * report.off:.1f}% of blocks more than 8 tokens from the grid "
                 f"search, {100 * report.fails:.1f}% miss it, {report.mean_tokens:.1f} tokens per block "
                 f"(search {report.search_mean_tokens:.1f})")
    print(line)


def _decode(args: argparse.Namespace) -> None:
    from ..models.registry import bundled_model_for
    from ..tokenization.files import decode_file
    from ..tokenization.tokenfile import read_etok
    from ..utils.fileio import check_output_file

    check_output_file(args.output, args.tokens_file)
    encoded = read_etok(args.tokens_file)
    model = _load_model(args, args.model or bundled_model_for(encoded.family, encoded.config_hash))
    with _autocast(args, model):
        output = decode_file(model, encoded, args.output, args.window, args.size, **_sampler_settings(args))
    (h, w), (mh, mw) = encoded.info.size, model.config.resolution
    if args.size == "model" and (h, w) != (mh, mw):
        print(f"wrote {output} at the model's {mw}x{mh} (--size source gives back the source's {w}x{h})")
    else:
        print(f"wrote {output}")


def _reconstruct(args: argparse.Namespace) -> None:
    from ..evaluation.plots import reconstruct_side_by_side
    from ..utils.fileio import check_output_file

    check_output_file(args.output, args.input)  # before loading the model; the library checks both outputs again
    model = _load_model(args)
    with _autocast(args, model):
        print(reconstruct_side_by_side(model, args.input, args.output, _target(args), _options(args, model)))


def _data_shard(args: argparse.Namespace) -> None:
    from ..training.shards import build_shards

    summary = build_shards(args.sources, args.destination, shard_size=args.shard_size, clip_frames=args.clip_frames,
                           short_side=args.short_side, fps=args.fps, progress=not args.no_progress)
    print(f"wrote {summary.shards} shards to {args.destination}: {summary.clips} video clips, {summary.images} images"
          f", {summary.skipped} unreadable files skipped")
    if summary.skipped and not summary.clips + summary.images:
        raise ElasticTokError(f"all {summary.skipped} inputs were unreadable (each is named above)")


def _tokenize_corpus(args: argparse.Namespace) -> None:
    from ..training.corpus import tokenize_corpus
    from ..training.distributed import setup

    world, _ = setup(args.device or "auto")
    model = _load_model(args).eval()
    with _autocast(args, model):
        summary = tokenize_corpus(model, args.sources, args.destination, _target(args), _options(args, model),
                                  shard_size=args.shard_size, progress=not args.no_progress, workers=args.workers,
                                  bf16=args.dtype == "bf16")
    if world.main:
        print(summary.line())
        if summary.inputs and summary.failed == summary.inputs:
            raise ElasticTokError(f"all {summary.inputs} inputs failed (each is named above)")


def _eval(args: argparse.Namespace) -> None:
    from ..evaluation.measurement import EvalRun, check_report_dir, evaluate_models, summary_table, write_report
    from ..evaluation.report import parse_fractions
    from ..tokenization.targets import parse_target

    thresholds = [parse_target(t) for t in args.thresholds.split(",")] if args.thresholds else None
    run = EvalRun(search=args.search, window=args.window, fractions=tuple(parse_fractions(args.fractions)),
                  progress=not args.no_progress, workers=args.workers)
    check_report_dir(args.out, args.inputs)  # before any work
    model = _load_model(args).eval()
    baselines = [_load_model(args, b).eval() for b in args.baseline]
    with _autocast(args, model):
        report = evaluate_models(model, baselines, args.inputs, thresholds, run, baseline_names=args.baseline)
    files = write_report(report, args.out)
    print(summary_table(report))
    print("wrote " + ", ".join(str(f) for f in files))


def _report(args: argparse.Namespace) -> None:
    from ..evaluation.report import check_report_file, make_report
    from ..tokenization.options import DEFAULT_TARGET

    check_report_file(args.output, args.inputs)  # before loading the models
    model = _load_model(args).eval()
    baselines = [_load_model(args, b).eval() for b in args.baseline]
    with _autocast(args, model):
        print(make_report(model, args.inputs, args.output, args.thresholds, baselines,
                          baseline_names=[Path(b).name for b in args.baseline], fractions=args.fractions,
                          search=args.search, window=args.window, progress=not args.no_progress,
                          selected=DEFAULT_TARGET))


COMMANDS = {
    "encode": _encode, "decode": _decode, "reconstruct": _reconstruct, "tokenize-corpus": _tokenize_corpus,
    "eval": _eval, "report": _report, "data shard": _data_shard, "train-length-head": _train_length_head,
    "train": _train, "convert-official": _convert_official,
}


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line errors (no usage block): ``error: <what> (see elastictok CMD --help)``."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="elastictok",
        description="Adaptive-length tokenization of images and video (ElasticTok).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    parser.add_argument("--version", action="version", version=f"elastictok {_version()}")
    add_subcommands(parser, COMMANDS)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("elastictok")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # before the library loads: --help and bad arguments answer at once
        # our lines at INFO (DEBUG with -v); other libraries' at WARNING, e.g. not torch's statistics at exit
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        logging.getLogger("elastictok").setLevel(logging.DEBUG if args.verbose else logging.INFO)
        with _one_line_warnings(), _terminate_as_interrupt():
            from ..tokenization import tokenizer  # noqa: F401 (the library, seconds with torch: here Ctrl-C is caught)
            args.func(args)
        code = 0
    except ElasticTokError as exc:
        _print_error(str(exc))
        code = 2
    except OSError as exc:  # the file system refused (full disk, permissions, a file where a folder should be)
        where = f"{exc.filename}: " if exc.filename else ""
        _print_error(f"{where}{exc.strerror or exc}")
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:  # a C extension (matplotlib's backend importing, ...) may wrap a Ctrl-C in its own error
        if not _caused_by_interrupt(exc):
            raise
        print("interrupted", file=sys.stderr)
        code = 130
    if argv is None:  # the program itself, done: a Ctrl-C while the interpreter shuts down (torch's exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # handlers) would print a traceback and lose the exit code
    if "torch" in sys.modules and _leave_process_group():
        # gloo's teardown can abort at interpreter exit; leave now that the group is destroyed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _print_error(message: str) -> None:
    """``error: <message>`` on one line, whatever the names in it hold (a file name may contain a newline)."""
    print("error: " + message.replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _one_line_warnings():
    """Libraries' warnings (PIL's corrupt EXIF, torch's) as one ``WARNING:`` line each, not two with source."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_: logging.getLogger("elastictok").warning(
            str(message).splitlines()[0] if str(message) else type(message).__name__)
        yield


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a killed job, a closed terminal's shell) unwinds like Ctrl-C, so that every atomic writer
    removes its temporary file and worker pools are shut down."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _leave_process_group() -> bool:
    from ..utils.runtime import distributed_ready

    if not distributed_ready():
        return False
    from ..training.distributed import teardown
    teardown()
    return True


if __name__ == "__main__":
    sys.exit(main())
