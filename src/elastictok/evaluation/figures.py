"""The evaluation's figures, drawn once (matplotlib): PNG files for ``elastictok eval``, and the same
figures as SVG text embedded in the HTML report.

Both place every curve by bits per pixel, so models of any family and token grid, and the codec
anchors (H.264, JPEG), share one axis.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .anchors import CODECS  # noqa: E402

CODEC_STYLES = {"H.264": ("^-", "#15803d"), "JPEG": ("v-", "#7c3aed")}


def svg_text(fig: plt.Figure) -> str:
    """The figure as standalone SVG text (closed afterwards)."""
    buffer = io.StringIO()
    try:
        fig.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    finally:
        plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def share_figure(report: dict) -> plt.Figure:
    """The paper's Fig. 4, by bits: share of blocks meeting each threshold against bits per pixel."""
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    model = report["model_label"]
    for colour, (name, row) in zip(colours, report["thresholds"].items()):
        for key, style, label in (("baseline_fixed", "o--", "fixed-length baselines (best)"),
                                  ("elastic_fixed", "s:", f"{model} at fixed lengths")):
            if report[key]:
                ax.plot([p["bpp"] for p in report[key]], [p["share_meeting"][name] for p in report[key]], style,
                        color=colour, alpha=0.7, label=f"{label}, {name}")
        for codec in CODECS:
            curve = report["anchors"].get(codec, [])
            style, _ = CODEC_STYLES[codec]
            ax.plot([p["bpp"] for p in curve], [p["share_meeting"][name] for p in curve], style, color=colour,
                    alpha=0.35, linewidth=1, markersize=4, label=f"{codec}, {name}")
        ax.plot([row["elastic_bpp"]], [row["elastic_share_meeting"]], "*", color=colour, markersize=14,
                label=f"{model} adaptive, {name}")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (raw token bits; codec payload)")
    ax.set_ylabel("share of blocks meeting the threshold")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title("blocks meeting the threshold vs bits (paper Fig. 4)")
    fig.tight_layout()
    return fig


def rate_distortion_figure(report: dict) -> plt.Figure:
    """PSNR and SSIM against bits per pixel: every baseline, the model at fixed lengths and adaptive, the codecs."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    model = report["model_label"]
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for name, curve in report["baselines"].items():
            ax.plot([p["bpp"] for p in curve], [p[metric] for p in curve], "o--", label=f"fixed-length {name}")
        ax.plot([p["bpp"] for p in report["elastic_fixed"]], [p[metric] for p in report["elastic_fixed"]], "s-",
                label=f"{model}, fixed lengths")
        for codec in CODECS:
            curve, (style, colour) = report["anchors"].get(codec, []), CODEC_STYLES[codec]
            ax.plot([p["bpp"] for p in curve], [p[metric] for p in curve], style, color=colour, label=codec)
        rows = report["thresholds"].values()
        ax.plot([r["elastic_bpp"] for r in rows], [r[f"elastic_{metric}"] for r in rows], "*", markersize=12,
                color="black", label=f"{model} adaptive (one per threshold)")
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("rate-distortion on the same frames")
    fig.tight_layout()
    return fig
