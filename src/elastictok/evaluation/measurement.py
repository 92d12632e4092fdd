"""The paper's measurement, made fair: at equal quality, how many fewer bits than a fixed-length tokenizer?

For each threshold, the model tokenizes every block adaptively; every baseline (a fixed-length
tokenizer of any family and token grid) and the model itself encode every block at each of a grid
of fixed lengths, and H.264 and JPEG code the same frames at a sweep of settings. Everything is
placed by bits per block (raw token bits; the token stream's entropy and LZMA size are reported
beside them), so models with other token counts or codebooks compare at equal bits. Fig. 4 of the
paper plots the share of blocks that meet the threshold against the bits spent; the saving is the
bits the best baseline needs to reach the model's share of blocks meeting the threshold
(interpolated on its curve), divided by the model's bits. Without thresholds, they come from the
model's own all-token quality on the inputs (``passes.default_thresholds``). The measuring itself, in this
process or on worker processes side by side, is ``passes``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import ElasticTokError
from ..media.io import is_video
from ..metrics.quality import METRICS
from ..models.base import tokens_at_share
from ..tokenization.options import TokenizeOptions
from ..tokenization.scoring import decode_and_score
from ..tokenization.targets import Threshold, parse_target
from ..tokenization.tokenfile import TokenizedVideo
from ..utils.console import progress_bar
from ..utils.fileio import check_output_dir
from ..utils.runtime import interrupts_held
from ..training.shards import OutputFolder
from .anchors import CODECS, H264_CRFS, JPEG_QUALITIES, bits_per_token, token_stream_bits
from .figures import rate_distortion_figure, share_figure
from .passes import DEFAULT_QUANTILES, BlockScores, EvalRun, Measurements, as_block_scores, measure
from .plots import save_png, tokens_figure


def score_blocks(model, encoded: TokenizedVideo, source, window: int | None | str = "model") -> BlockScores:
    """Decode ``encoded`` and score each block against ``source`` (a path, or its blocks already read)
    with every named metric, through the one measuring path (``tokenization.scoring``)."""
    return as_block_scores(model, encoded, decode_and_score(model, encoded, source, TokenizeOptions(window=window)))


def share_meeting(scores: list[BlockScores], target: Threshold) -> float:
    """Share of all blocks (over all inputs) whose score meets the target."""
    return blocks_meeting(scores, target) / sum(len(s.metrics[target.metric]) for s in scores)


def blocks_meeting(scores: list[BlockScores], target: Threshold) -> int:
    values = np.concatenate([s.metrics[target.metric] for s in scores])
    return int(target.meets(torch.from_numpy(values)).sum())


def fraction_at_share(curve: list[tuple[float, float]], share: float) -> float | None:
    """Smallest x (a token share, or bits) at which a (x, share meeting) curve reaches ``share``, interpolated
    on its upper envelope (a point counts at every x right of it)."""
    previous, best = None, -1.0
    for x, reached in sorted(curve):
        best = max(best, reached)
        if best >= share - 1e-12:
            if previous is None or best == previous[1]:
                return x
            x0, s0 = previous
            return x0 + (x - x0) * (share - s0) / (best - s0)
        previous = (x, best)
    return None


def mean_metric(scores: list[BlockScores], name: str) -> float:
    return float(np.concatenate([s.metrics[name] for s in scores]).mean())


def evaluate_models(model, baselines: list, inputs: list[str], thresholds: list[Threshold] | None = None,
                    run: EvalRun = EvalRun(), baseline_names: list[str] | None = None) -> dict:
    """Everything ``report.json`` holds. ``thresholds`` None: ``default_thresholds`` of the model's own quality.

    The model at each threshold and at fixed lengths, each baseline at fixed lengths (any family, any
    tokens per block: they are compared at equal bits), and H.264 and JPEG on the same frames. The
    baseline curve keeps, at each bit rate, the best of the baselines. ``run.workers`` above one measures on
    that many processes, each with an equal share of torch's threads here (``passes.measure``).
    """
    _check_comparable(model, baselines, thresholds)
    names = baseline_names or [f"baseline{i}" for i in range(len(baselines))]
    models = [*baselines, model]  # the model's own fixed-length curve comes last
    lengths = [sorted({tokens_at_share(m.config, f) for f in run.fractions}) for m in models]
    bar = progress_bar(total=len(inputs) * (sum(map(len, lengths)) + 1 + len(thresholds or DEFAULT_QUANTILES)),
                       desc="eval", show=run.progress)
    measured = measure(models, lengths, inputs, thresholds, run, bar)
    bar.close()
    return _assemble(model, dict(zip(names, baselines)), inputs, lengths, measured)


def _assemble(model, baselines: dict, inputs: list[str], lengths: list[list[int]], measured: Measurements) -> dict:
    """``report.json``'s content from the measured scores."""
    fixed, anchors, thresholds, adaptive = measured.fixed, measured.anchors, measured.thresholds, measured.adaptive
    c = model.config
    pixels = c.frames_per_block * c.resolution[0] * c.resolution[1]
    n_blocks = sum(len(s.metrics["mse"]) for s in fixed[-1][0])
    point = lambda scores, **extra: _point(scores, n_blocks, pixels, thresholds, **extra)  # noqa: E731
    curves = [[point(scores, tokens_per_block=n, tokens_fraction=n / m.config.tokens_per_block)
               for scores, n in zip(per_length, counts)]
              for per_length, counts, m in zip(fixed, lengths, [*baselines.values(), model])]
    per_baseline, elastic_fixed = dict(zip(baselines, curves[:-1])), curves[-1]
    codec_curves = {codec: [point(scores, setting=setting) for scores, setting in zip(per_setting, sweep)]
                    for (codec, per_setting), sweep in zip(anchors.items(), _sweeps(anchors))}
    report: dict = {"tokens_per_block": c.tokens_per_block, "min_tokens": c.min_tokens, "inputs": inputs,
                    "blocks": n_blocks, "pixels_per_block": pixels, "thresholds": {}, "tokens_over_time": {},
                    "baseline_fixed": _envelope([p for curve in per_baseline.values() for p in curve]),
                    "baselines": per_baseline, "elastic_fixed": elastic_fixed, "anchors": codec_curves,
                    "model": _model_entry(model), "model_label": model.display_name,
                    "baseline_models": {name: _model_entry(b) for name, b in baselines.items()},
                    "_encodings": {}}
    for target in thresholds:
        pairs = adaptive[target.key]
        encodings, scores = [e for e, _ in pairs], [s for _, s in pairs]
        row = _threshold_row(scores, target, report, c.tokens_per_block)
        row.update(_stream_bits(encodings, model, n_blocks))
        report["thresholds"][target.key] = row
        report["tokens_over_time"][target.key] = {p: e.counts.tolist() for p, e in zip(inputs, encodings)}
        report["_encodings"][target.key] = encodings
    return report


def _sweeps(anchors: dict) -> list[tuple]:
    return [H264_CRFS if codec == "H.264" else JPEG_QUALITIES for codec in anchors]


def _model_entry(model) -> dict:
    """What eval says about a model beside its numbers: its name, family, grid and training."""
    c = model.config
    return {"label": model.display_name, "family": model.family, "name": c.name,
            "tokens_per_block": c.tokens_per_block, "bits_per_token": bits_per_token(model),
            "training": model.training_record()}


def _stream_bits(encodings: list[TokenizedVideo], model, n_blocks: int) -> dict:
    """Bits per block of the token streams: raw, order-0 entropy and LZMA."""
    bits = token_stream_bits(encodings, bits_per_token(model))
    return {f"{kind}_bits_per_block": None if value is None else value / n_blocks for kind, value in bits.items()}


def _check_comparable(model, baselines: list, thresholds: list[Threshold] | None) -> None:
    """Baselines read the same blocks; thresholds are metric:value pairs."""
    c = model.config
    if any((b.config.resolution, b.config.frames_per_block) != (c.resolution, c.frames_per_block) for b in baselines):
        raise ElasticTokError("model and baselines must read the same blocks (resolution and frames per block)")
    for target in thresholds or []:
        if not isinstance(target, Threshold) or not isinstance(target.metric, str):
            raise ElasticTokError("eval thresholds are metric:value pairs such as mse:0.003")


def _point(scores: list[BlockScores], n_blocks: int, pixels: int, thresholds: list[Threshold], **extra) -> dict:
    """One point of a rate-distortion curve: bits, mean metrics, and the blocks meeting each threshold."""
    bits = sum(s.bits for s in scores) / n_blocks
    return {**extra, "bits_per_block": bits, "bpp": bits / pixels,
            **{name: mean_metric(scores, name) for name in METRICS},
            "share_meeting": {t.key: share_meeting(scores, t) for t in thresholds},
            "blocks_meeting": {t.key: blocks_meeting(scores, t) for t in thresholds}}


def _envelope(points: list[dict]) -> list[dict]:
    """The baselines' best: at each bit rate, the point of the best PSNR among those at that rate or fewer bits."""
    best: list[dict] = []
    for point in sorted(points, key=lambda p: p["bits_per_block"]):
        if not best or point["psnr"] > best[-1]["psnr"]:
            best.append(point)
    return best


def _threshold_row(scores: list[BlockScores], target: Threshold, report: dict, m: int) -> dict:
    """One threshold's line: the model's point, the bits a fixed-length tokenizer needs for the same share of
    blocks meeting it (baselines, and the model itself at fixed lengths), and the codecs at the same bits."""
    point = _point(scores, report["blocks"], report["pixels_per_block"], [target])
    share = point["share_meeting"][target.key]
    baseline = [(p["bits_per_block"], p["share_meeting"][target.key])
                for curve in report["baselines"].values() for p in curve]
    same = [(p["bits_per_block"], p["share_meeting"][target.key]) for p in report["elastic_fixed"]]
    needed = fraction_at_share(baseline, share) if share > 0 and baseline else None
    needed_same = fraction_at_share(same, share) if share > 0 else None
    bits = point["bits_per_block"]
    return {
        "elastic_tokens_fraction": float(np.concatenate([s.counts for s in scores]).mean()) / m,
        "elastic_share_meeting": share, "elastic_blocks_meeting": point["blocks_meeting"][target.key],
        "elastic_bits_per_block": bits, "elastic_bpp": point["bpp"],
        "baseline_bits_at_equal_share": needed, "token_saving": None if needed is None else needed / bits,
        "baseline_max_share_meeting": max((s for _, s in baseline), default=None),
        "elastic_fixed_bits_at_equal_share": needed_same,
        "token_saving_vs_same_model_fixed": None if needed_same is None else needed_same / bits,
        "elastic_psnr": point["psnr"], "elastic_ssim": point["ssim"], "elastic_mse": point["mse"],
        "anchors_at_equal_bits": {codec: _at_bits(curve, bits) for codec, curve in report["anchors"].items()},
    }


def _at_bits(curve: list[dict], bits: float) -> dict | None:
    """A codec's PSNR and SSIM at ``bits`` per block, interpolated between its settings (None outside them)."""
    points = sorted(curve, key=lambda p: p["bits_per_block"])
    xs = [p["bits_per_block"] for p in points]
    if not xs or not xs[0] <= bits <= xs[-1]:
        return None
    return {name: float(np.interp(bits, xs, [p[name] for p in points])) for name in ("psnr", "ssim")}


def _training_text(entry: dict) -> str:
    """``4650 steps, 736 CPU-min`` from a model's training record; ``not recorded`` without one."""
    record = entry.get("training")
    if not record:
        return "not recorded"
    device = "GPU" if str(record.get("device", "cpu")).startswith("cuda") else "CPU"
    return f"{record.get('steps', '?')} steps, {record.get('minutes', '?')} {device}-min"


def summary_table(report: dict) -> str:
    """The results as Markdown (printed by the CLI, saved as summary.md): per threshold, then the models."""
    model = report["model_label"]

    def pct(value: float | None) -> str:
        return "never" if value is None else f"{100 * value:.1f}%"

    def bits(value: float | None) -> str:
        return "—" if value is None else f"{value:.0f}"

    lines = [f"{report['blocks']} blocks, {report['tokens_per_block']} tokens per block, "
             f"{report['pixels_per_block']} pixels per block",
             "",
             f"| threshold | blocks meeting | {model} tokens | bits per block: raw / entropy / lzma | bpp "
             f"| baseline bits at equal share | saving | saving vs {model} at fixed lengths | {model} PSNR / SSIM "
             "| H.264 at equal bits | JPEG at equal bits |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["thresholds"].items():
        lines.append(_threshold_line(name, row, report, pct, bits))
    lines += ["", f"| model | tokens per block | bits per token | training |", "|---|---|---|---|"]
    for name, entry in [(report["model"]["name"], report["model"]), *report["baseline_models"].items()]:
        lines.append(f"| {entry['label']} {name} | {entry['tokens_per_block']} | {entry['bits_per_token']:g} "
                     f"| {_training_text(entry)} |")
    return "\n".join(lines) + "\n"


def _threshold_line(name: str, row: dict, report: dict, pct, bits) -> str:
    met = f"{row['elastic_blocks_meeting']} of {report['blocks']} ({pct(row['elastic_share_meeting'])})"
    if row["elastic_share_meeting"] == 0:
        needed = saving = same = "— (no block meets it)"
    else:
        needed = bits(row["baseline_bits_at_equal_share"])
        if row["token_saving"] is None and row["baseline_max_share_meeting"] is not None:
            needed += f" (baselines reach at most {pct(row['baseline_max_share_meeting'])})"
        saving = "—" if row["token_saving"] is None else f"{row['token_saving']:.2f}x"
        same = row["token_saving_vs_same_model_fixed"]
        same = "—" if same is None else f"{same:.2f}x"
    label = parse_target(name).label(report["tokens_per_block"])
    codecs = [row["anchors_at_equal_bits"].get(codec) for codec in CODECS]
    codecs = ["outside its range" if c is None else f"{c['psnr']:.2f} dB / {c['ssim']:.3f}" for c in codecs]
    return (f"| {label} | {met} | {pct(row['elastic_tokens_fraction'])} | {bits(row['raw_bits_per_block'])} / "
            f"{bits(row['entropy_bits_per_block'])} / {bits(row['lzma_bits_per_block'])} | {row['elastic_bpp']:.3f} "
            f"| {needed} | {saving} | {same} | {row['elastic_psnr']:.2f} dB / {row['elastic_ssim']:.3f} "
            f"| {codecs[0]} | {codecs[1]} |")


REPORT_FILES = ("report.json", "summary.md", "fig4_share_vs_bits.png", "rate_distortion.png")


def report_files(inputs: list[str]) -> list[str]:
    """The names ``write_report`` writes for these inputs: ``REPORT_FILES`` and a plot per video."""
    return [*REPORT_FILES, *_tokens_plot_names([p for p in inputs if is_video(Path(p))]).values()]


def check_report_dir(out: str | Path, inputs: list[str]) -> None:
    """Before the work: ``out`` is a writable folder or can be made one, and none of the report's file
    names in it is a folder, pipe or device (which a file cannot replace). Nothing is created here."""
    out = Path(out)
    check_output_dir(out)
    for name in report_files(inputs):
        path = out / name
        if path.exists() and not path.is_file():
            kind = "a directory" if path.is_dir() else "a pipe or device"
            raise ElasticTokError(f"{path}: is {kind}; the report writes a file of that name")


def write_report(report: dict, out: str | Path) -> list[Path]:
    """``report.json``, ``summary.md`` and the plots in the folder ``out``; returns the files written.

    All are written into a temporary folder first and moved into ``out`` together: the report
    appears whole or not at all (an error, a full disk, Ctrl-C).
    """
    out = Path(out)
    encodings = report.pop("_encodings", {})
    videos = sorted({e.info.source for per_threshold in encodings.values() for e in per_threshold
                     if not e.info.is_image})
    check_report_dir(out, videos)
    try:
        with _staged(out) as stage:
            (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            (stage / "summary.md").write_text(summary_table(report))
            save_png(share_figure(report), stage / "fig4_share_vs_bits.png")
            save_png(rate_distortion_figure(report), stage / "rate_distortion.png")
            for source, plot_name in _tokens_plot_names(videos).items():
                per_threshold = {name: next(e for e in es if e.info.source == source) for name, es in encodings.items()}
                save_png(tokens_figure(per_threshold, title=f"{Path(source).name}: tokens per block"),
                         stage / plot_name)
    except OSError as exc:  # a full disk, ...: one line naming the report folder
        raise ElasticTokError(f"{out}: cannot write the report ({exc.strerror or exc})") from None
    return [out / name for name in report_files(videos)]


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A hidden temporary folder inside ``out`` (made if missing) to write files into; they are moved into
    ``out`` once all are written. In every case the temporary folder is removed; on failure, also the
    files already moved and the folders made here. ``out`` is held meanwhile (a second report staged into it
    at the same moment is refused, not mixed in), and a killed run's temporary folder is removed."""
    folder = OutputFolder(out).open()
    stage, moved, done = None, [], False
    try:
        folder.remove_temporaries(".report.*.tmp")
        stage = Path(tempfile.mkdtemp(prefix=".report.", suffix=".tmp", dir=out))
        yield stage
        with interrupts_held():  # a Ctrl-C among the renames would leave half the old report, half the new
            for file in sorted(stage.iterdir()):
                os.replace(file, out / file.name)
                moved.append(out / file.name)
            done = True
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if not done:
            for path in moved:
                path.unlink(missing_ok=True)
        folder.close()  # and the folders made for it, if left empty


def _tokens_plot_names(videos: list[str]) -> dict[str, str]:
    """Each video's tokens-over-time plot: named by its stem, or by its folder and stem where videos share a stem
    (``a/clip.mp4`` and ``b/clip.mp4``), so that no plot replaces another."""
    stems = Counter(Path(v).stem for v in set(videos))
    names: dict[str, str] = {}
    for video in sorted(set(videos)):
        path = Path(video)
        label = path.stem if stems[path.stem] == 1 else f"{path.parent.name}_{path.stem}"
        name, n = f"tokens_over_time_{label}.png", 1
        while name in names.values():
            n += 1
            name = f"tokens_over_time_{label}_{n}.png"
        names[video] = name
    return names
