"""The paper's measurement: at equal quality, how many fewer tokens than a fixed-length tokenizer?

For each threshold, the elastic model tokenizes every block adaptively; the fixed-length baseline
(same architecture, trained with ``fixed:<fraction>`` masks) encodes every block with each of a
grid of fixed lengths. Fig. 4 of the paper plots the share of blocks that meet the threshold
against the share of tokens used; the token saving is the baseline's token share needed to reach
the elastic model's share of blocks meeting the threshold (interpolated on its grid), divided by
the elastic model's token share.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..errors import ElasticTokError  # noqa: E402
from ..media.io import is_video  # noqa: E402
from ..metrics.quality import METRICS  # noqa: E402
from ..tokenization.options import TokenizeOptions  # noqa: E402
from ..tokenization.targets import Threshold, TokenCount  # noqa: E402
from ..tokenization.tokenfile import TokenizedVideo  # noqa: E402
from ..tokenization.tokenizer import read_source, source_scores, tokenize_blocks  # noqa: E402
from ..utils.console import progress_bar  # noqa: E402
from ..utils.fileio import check_output_dir, missing_folders, remove_empty_folders  # noqa: E402
from ..utils.runtime import interrupts_held  # noqa: E402
from .plots import save_png, tokens_figure  # noqa: E402


@dataclass
class BlockScores:
    """Per-block quality of one tokenization of one input, and the tokens it used."""

    counts: np.ndarray
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # mse, psnr, ssim per block


@torch.no_grad()
def score_blocks(model, encoded: TokenizedVideo, source, window: int | None | str = "model") -> BlockScores:
    """Decode ``encoded`` and score each block against ``source`` (a path, or its blocks already read)
    with every named metric."""
    values = source_scores(model, encoded, source, TokenizeOptions(window=window), metrics=list(METRICS))
    return BlockScores(encoded.counts.numpy(), {k: np.array(v) for k, v in values.items()})


def share_meeting(scores: list[BlockScores], target: Threshold) -> float:
    """Share of all blocks (over all inputs) whose score meets the target."""
    metric = target.metric
    values = np.concatenate([s.metrics[metric] for s in scores])
    return float(target.meets(torch.from_numpy(values)).float().mean())


def token_share(scores: list[BlockScores], max_tokens: int) -> float:
    counts = np.concatenate([s.counts for s in scores])
    return float(counts.sum() / (len(counts) * max_tokens))


def fraction_at_share(curve: list[tuple[float, float]], share: float) -> float | None:
    """Smallest token share at which a (token share, share meeting) curve reaches ``share``, interpolated."""
    curve = sorted(curve)
    previous = None
    for fraction, reached in curve:
        if reached >= share - 1e-12:
            if previous is None or reached == previous[1]:
                return fraction
            f0, s0 = previous
            return f0 + (fraction - f0) * (share - s0) / (reached - s0)
        previous = (fraction, reached)
    return None


def mean_metric(scores: list[BlockScores], name: str) -> float:
    return float(np.concatenate([s.metrics[name] for s in scores]).mean())


def evaluate_models(model, baselines: list, inputs: list[str], thresholds: list[Threshold], fractions: list[float],
                    search: str = "binary", window: int | None | str = "model", progress: bool = True,
                    baseline_names: list[str] | None = None) -> dict:
    """Everything ``report.json`` holds; ``model`` and every baseline must share the token grid.

    Several baselines (say, one trained per fixed length) are each measured at every length; the
    baseline curve keeps, per length and threshold, the best of them, so the comparison is against
    the strongest fixed-length tokenizer at each length. Each input is read once and measured whole
    before the next, so memory holds one input's frames.
    """
    c = model.config
    _check_comparable(model, baselines, thresholds)
    names = baseline_names or [f"baseline{i}" for i in range(len(baselines))]
    m = c.tokens_per_block
    lengths = sorted({min(m, max(c.min_tokens, round(f * m))) for f in fractions})
    tok_models = [*baselines, model]  # the model's own fixed-length curve comes last
    fixed: list[list[list[BlockScores]]] = [[[] for _ in lengths] for _ in tok_models]  # [model][length][input]
    adaptive: dict[str, list[tuple[TokenizedVideo, BlockScores]]] = {_name(t): [] for t in thresholds}
    bar = progress_bar(total=len(inputs) * (len(lengths) * len(tok_models) + len(thresholds)), desc="eval",
                       show=progress)
    for path in inputs:
        info, blocks = read_source(model, path)
        blocks = list(blocks)
        for per_length, tok_model in zip(fixed, tok_models):
            for scores, n in zip(per_length, lengths):
                encoded = tokenize_blocks(tok_model, info, blocks, TokenCount(n), window=window)
                scores.append(score_blocks(tok_model, encoded, blocks, window))
                bar.update(1)
        for target in thresholds:
            encoded = tokenize_blocks(model, info, blocks, target, search=search, window=window)
            adaptive[_name(target)].append((encoded, score_blocks(model, encoded, blocks, window)))
            bar.update(1)
    bar.close()
    curves = [[_length_point(scores, n, m, thresholds) for scores, n in zip(per_length, lengths)]
              for per_length in fixed]
    per_baseline, elastic_fixed_curve = dict(zip(names, curves[:-1])), curves[-1]
    baseline_curve = [_best_of([curve[i] for curve in per_baseline.values()]) for i in range(len(lengths))]
    report: dict = {"tokens_per_block": m, "min_tokens": c.min_tokens, "inputs": inputs,
                    "blocks": sum(len(s.counts) for s in fixed[-1][0]), "thresholds": {},
                    "baseline_fixed": baseline_curve, "baselines": per_baseline,
                    "elastic_fixed": elastic_fixed_curve, "tokens_over_time": {}, "model_family": model.family,
                    "model_label": model.display_name, "_encodings": {},
                    "baseline_families": {name: b.family for name, b in zip(names, baselines)}}
    for name, pairs in adaptive.items():
        encodings, scores = [e for e, _ in pairs], [s for _, s in pairs]
        target = next(t for t in thresholds if _name(t) == name)
        report["thresholds"][name] = _threshold_row(scores, target, baseline_curve, elastic_fixed_curve, m)
        report["tokens_over_time"][name] = {p: e.counts.tolist() for p, e in zip(inputs, encodings)}
        report["_encodings"][name] = encodings
    return report


def _check_comparable(model, baselines: list, thresholds: list[Threshold]) -> None:
    """Baselines tokenize the same blocks on the same token grid; thresholds are metric:value pairs."""
    c = model.config
    if not baselines:
        raise ElasticTokError("eval needs at least one fixed-length baseline")
    if any(b.config.tokens_per_block != c.tokens_per_block for b in baselines):
        raise ElasticTokError(f"model and baselines must have the same tokens per block ({c.tokens_per_block} vs "
                              f"{', '.join(str(b.config.tokens_per_block) for b in baselines)})")
    if any((b.config.resolution, b.config.frames_per_block) != (c.resolution, c.frames_per_block) for b in baselines):
        raise ElasticTokError("model and baselines must read the same blocks (resolution and frames per block)")
    for target in thresholds:
        if not isinstance(target, Threshold) or not isinstance(target.metric, str):
            raise ElasticTokError("eval thresholds are metric:value pairs such as mse:0.003")


def _length_point(scores: list[BlockScores], n: int, m: int, thresholds: list[Threshold]) -> dict:
    """One fixed length's point of a curve: mean metrics and the share of blocks meeting each threshold."""
    return {"tokens_per_block": n, "tokens_fraction": n / m, **{name: mean_metric(scores, name) for name in METRICS},
            "share_meeting": {_name(t): share_meeting(scores, t) for t in thresholds}}


def _threshold_row(scores: list[BlockScores], target: Threshold, baseline_curve: list[dict],
                   elastic_fixed_curve: list[dict], m: int) -> dict:
    """One threshold's line of the report: the elastic model's point and the fixed-length tokens it saves."""
    elastic_fraction, elastic_share = token_share(scores, m), share_meeting(scores, target)
    curve = [(point["tokens_fraction"], point["share_meeting"][_name(target)]) for point in baseline_curve]
    same_model = [(point["tokens_fraction"], point["share_meeting"][_name(target)]) for point in elastic_fixed_curve]
    # With no block meeting the threshold there is nothing to match: the saving is undefined.
    needed = fraction_at_share(curve, elastic_share) if elastic_share > 0 else None
    needed_same = fraction_at_share(same_model, elastic_share) if elastic_share > 0 else None
    return {
        "elastic_tokens_fraction": elastic_fraction,
        "elastic_share_meeting": elastic_share,
        "baseline_tokens_fraction_at_equal_share": needed,
        "token_saving": None if needed is None else needed / elastic_fraction,
        "baseline_max_share_meeting": max(s for _, s in curve),
        "elastic_fixed_tokens_fraction_at_equal_share": needed_same,
        "token_saving_vs_same_model_fixed": None if needed_same is None else needed_same / elastic_fraction,
        "elastic_psnr": mean_metric(scores, "psnr"), "elastic_ssim": mean_metric(scores, "ssim"),
        "elastic_mse": mean_metric(scores, "mse"),
    }


def _best_of(points: list[dict]) -> dict:
    """One length's point for the strongest baseline: best share per threshold, metrics of the best PSNR."""
    best = max(points, key=lambda p: p["psnr"])
    shares = {name: max(p["share_meeting"][name] for p in points) for name in best["share_meeting"]}
    return {**best, "share_meeting": shares}


def _name(target: Threshold) -> str:
    return f"{target.metric}:{target.value:g}"


def _model_label(report: dict) -> str:
    """The evaluated model's family as the tables and plots name it."""
    return report["model_label"]


def summary_table(report: dict) -> str:
    """The per-threshold results as a Markdown table (printed by the CLI, saved as summary.md)."""
    model = _model_label(report)

    def pct(value: float | None) -> str:
        return "never" if value is None else f"{100 * value:.1f}%"

    lines = [f"{report['blocks']} blocks, {report['tokens_per_block']} tokens per block",
             "",
             f"| threshold | {model} tokens | blocks meeting | baseline tokens at equal share | token saving "
             f"| saving vs {model} at fixed lengths | {model} PSNR / SSIM |",
             "|---|---|---|---|---|---|---|"]
    for name, row in report["thresholds"].items():
        if row["elastic_share_meeting"] == 0:
            needed = saving = same = "— (no block meets it)"
        else:
            needed = pct(row["baseline_tokens_fraction_at_equal_share"])
            if row["token_saving"] is None:
                needed += f" (baseline reaches at most {pct(row['baseline_max_share_meeting'])})"
            saving = "—" if row["token_saving"] is None else f"{row['token_saving']:.2f}x"
            same = row["token_saving_vs_same_model_fixed"]
            same = "—" if same is None else f"{same:.2f}x"
        metric, value = name.split(":")
        label = f"{name} ({10 * np.log10(4 / float(value)):.1f} dB)" if metric == "mse" else name
        lines.append(f"| {label} | {pct(row['elastic_tokens_fraction'])} | {pct(row['elastic_share_meeting'])} "
                     f"| {needed} | {saving} | {same} | {row['elastic_psnr']:.2f} dB / {row['elastic_ssim']:.3f} |")
    return "\n".join(lines) + "\n"


REPORT_FILES = ("report.json", "summary.md", "fig4_share_vs_tokens.png", "rate_distortion.png")


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
            save_png(_plot_fig4(report), stage / "fig4_share_vs_tokens.png")
            save_png(_plot_rate_distortion(report), stage / "rate_distortion.png")
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
    files already moved and the folders made here."""
    made = missing_folders(out)
    stage, moved, done = None, [], False
    try:
        out.mkdir(parents=True, exist_ok=True)
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
            remove_empty_folders(made)


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


def _plot_fig4(report: dict) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    baseline = "fixed-length baseline" if len(report["baselines"]) == 1 else "fixed-length baselines (best)"
    for colour, (name, row) in zip(colours, report["thresholds"].items()):
        xs = [p["tokens_fraction"] for p in report["baseline_fixed"]]
        ys = [p["share_meeting"][name] for p in report["baseline_fixed"]]
        ax.plot(xs, ys, "o--", color=colour, alpha=0.7, label=f"{baseline}, {name}")
        ax.plot([row["elastic_tokens_fraction"]], [row["elastic_share_meeting"]], "*", color=colour, markersize=14,
                label=f"{_model_label(report)} adaptive, {name}")
    ax.set_xlabel("share of tokens used")
    ax.set_ylabel("share of blocks meeting the threshold")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title("blocks meeting the threshold vs tokens (paper Fig. 4)")
    fig.tight_layout()
    return fig


def _plot_rate_distortion(report: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for key, label, style in (("baseline_fixed", "fixed-length baseline", "o--"),
                                  ("elastic_fixed", f"{_model_label(report)}, fixed length", "s-")):
            ax.plot([p["tokens_per_block"] for p in report[key]], [p[metric] for p in report[key]], style, label=label)
        xs = [row["elastic_tokens_fraction"] * report["tokens_per_block"] for row in report["thresholds"].values()]
        ys = [row[f"elastic_{metric}"] for row in report["thresholds"].values()]
        ax.plot(xs, ys, "*", markersize=12, label=f"{_model_label(report)} adaptive (one per threshold)")
        ax.set_xlabel("tokens per block")
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("rate-distortion")
    fig.tight_layout()
    return fig
