"""One self-contained HTML page to look at a tokenization: ``elastictok report``.

Per input the page shows the original and the reconstruction playing in sync, a control that
switches between targets (thresholds, token counts, budgets; every reconstruction precomputed)
with the tokens and PSNR of each, tokens and PSNR per block over time (a click seeks the videos)
and a per-block table. Given fixed-length baselines it also shows each baseline at the same
number of tokens, and the measurement of ``elastictok eval`` (Fig. 4, rate-distortion, summary
table), computed by the same functions, so the numbers are the same.

Everything lives in the one HTML file: videos are VP9 WebM (H.264 mp4 where PyAV lacks libvpx)
and images PNG, embedded as base64 data URIs; plots are SVG drawn from embedded JSON by the
page's own script (``report_assets/``). No network, no server: it opens from a file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from ..errors import ElasticTokError
from ..media.io import write_video
from ..media.transforms import display_scale, upscale
from ..models.base import tokens_at_share
from ..tokenization.options import DEFAULT_REPORT_TARGETS, TokenizeOptions
from ..tokenization.scoring import Measured, decode_and_score
from ..tokenization.targets import Target, Threshold, TokenCount, parse_target
from ..tokenization.tokenfile import TokenizedVideo
from ..tokenization.tokenizer import tokenize
from ..utils.console import progress_bar
from ..utils.fileio import atomic_path, check_output_file
from .anchors import bits_per_token
from .figures import rate_distortion_figure, share_figure, svg_text
from .measurement import EvalRun, evaluate_models, summary_table

ASSETS = Path(__file__).parent / "report_assets"
DEFAULT_FRACTIONS = "0.0625,0.125,0.25,0.375,0.5,0.75,1"


# ---- arguments ------------------------------------------------------------------------------------------
def parse_targets(text: str, max_tokens: int) -> list[Target]:
    """Comma-separated targets (``mse:0.03,psnr:25,tokens:64,budget:900``); ``tokens:all`` is every token."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ElasticTokError("--thresholds is empty: give targets such as mse:0.03,tokens:64")
    targets = [TokenCount(max_tokens) if t == "tokens:all" else parse_target(t) for t in items]
    for target in targets:
        if isinstance(target, TokenCount) and target.tokens > max_tokens:
            raise ElasticTokError(f"tokens:{target.tokens} is more than this model's {max_tokens} tokens per block")
    names = [t.key for t in targets]
    if len(set(names)) != len(names):
        raise ElasticTokError(f"--thresholds names a target twice: {text!r}")
    return targets


def parse_fractions(text: str) -> list[float]:
    try:
        fractions = [float(f) for f in text.split(",")]
    except ValueError:
        raise ElasticTokError(f"--fractions must be comma-separated numbers, got {text!r}") from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ElasticTokError(f"--fractions must lie in (0, 1], got {text!r}")
    return fractions


# ---- media ------------------------------------------------------------------------------------------------
def _upscale(frames: torch.Tensor, scale: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> nearest-neighbour upscaled, padded to even sizes (yuv420p)."""
    big = upscale(frames, scale)
    h, w = big.shape[1:3]
    if h % 2 or w % 2:
        big = torch.nn.functional.pad(big.permute(0, 3, 1, 2).float(), (0, w % 2, 0, h % 2),
                                      mode="replicate").round().to(torch.uint8).permute(0, 2, 3, 1)
    return big.contiguous().numpy()


def video_data_uri(frames: torch.Tensor, fps: float, scale: int) -> str:
    """uint8 (T, H, W, 3) as a browser-playable video data URI: VP9 WebM, else H.264 mp4."""
    big = _upscale(frames, scale)
    if "libvpx-vp9" in av.codecs_available:
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="webm") as container:
            stream = container.add_stream("libvpx-vp9", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = big.shape[2], big.shape[1], "yuv420p"
            # Constant quality, about 41 dB against its input (the model errs at ~20 dB): the page shows the
            # model's errors, not the codec's. The realtime preset encodes a 256x256 frame in ~5 ms.
            stream.options = {"crf": "8", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
            for frame in big:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        return "data:video/webm;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    with tempfile.TemporaryDirectory() as folder:  # PyAV without libvpx: H.264, which Chromium and Firefox play
        path = Path(folder) / "video.mp4"
        write_video(path, torch.from_numpy(big), fps, crf=10)
        return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image_data_uri(frame: torch.Tensor, scale: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(_upscale(frame[None], scale)[0]).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---- measuring ----------------------------------------------------------------------------------------------
def _measured(model, encoded: TokenizedVideo, source: str, window: int | None | str) -> Measured:
    """Scores and frames of a tokenization, from the one measuring path eval uses (``tokenization.scoring``)."""
    return decode_and_score(model, encoded, source, TokenizeOptions(window=window), frames=True)


def _setting(decoded: Measured, encoded: TokenizedVideo, target: Target | None, media: str) -> dict:
    counts = encoded.counts.tolist()
    setting = {"media": media, "counts": counts, "tokens": int(sum(counts)), "mean_tokens": sum(counts) / len(counts),
               "token_share": sum(counts) / (len(counts) * encoded.max_tokens),
               **{name: [round(v, 6) for v in vals] for name, vals in decoded.metrics.items()},
               # means over blocks, as elastictok eval reports them
               **{f"{name}_mean": float(np.mean(vals)) for name, vals in decoded.metrics.items()},
               "meets": None, "meeting": None}
    if isinstance(target, Threshold):
        meets = target.meets(torch.tensor(decoded.metrics[target.name])).tolist()
        setting["meets"], setting["meeting"] = meets, sum(meets) / len(meets)
    return setting


def _media_uri(decoded: Measured, info, scale: int, frames: torch.Tensor | None = None) -> str:
    """The reconstruction (or ``frames``) of an input as a PNG or video data URI."""
    frames = decoded.recon if frames is None else frames
    return image_data_uri(frames[0], scale) if info.is_image else video_data_uri(frames, info.fps, scale)


# ---- the report ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportRun:
    """How a report tokenizes: the models, the search and context, and what the page opens on."""

    model: object
    baselines: tuple = ()
    names: tuple[str, ...] = ()
    search: str = "binary"
    window: int | None | str = "model"
    progress: bool = False


def _check_report_args(model, inputs: list[str], targets: list[Target], baselines: list, names: list[str],
                       selected: Target | None) -> None:
    c = model.config
    if len(names) != len(baselines):
        raise ElasticTokError("one name per baseline")
    for name, baseline in zip(names, baselines):
        b = baseline.config
        if (tuple(b.resolution), b.frames_per_block) != (tuple(c.resolution), c.frames_per_block):
            raise ElasticTokError(f"baseline {name} reads other blocks than the model (resolution and frames per "
                                  "block must match)")
    for path in inputs:
        if not Path(path).is_file():
            raise ElasticTokError(f"{path}: no such file")
    if not targets:
        raise ElasticTokError("no targets to report")
    if any(isinstance(t, Threshold) and not isinstance(t.metric, str) for t in targets):
        raise ElasticTokError("report thresholds are metric:value pairs such as mse:0.03")
    if selected is not None and selected.key not in {t.key for t in targets}:
        raise ElasticTokError(f"the page cannot open on {selected.key}: it is not one of the targets")


def _eval_section(run: ReportRun, inputs: list[str], thresholds: list[Threshold],
                  fractions: list[float] | None) -> tuple[dict | None, dict]:
    """``elastictok eval``'s measurement (with the codec anchors) and, keyed by (target, input), the
    tokenizations it made."""
    if not thresholds:
        return None, {}
    eval_run = EvalRun(run.search, run.window, tuple(fractions or parse_fractions(DEFAULT_FRACTIONS)), run.progress)
    evaluation = evaluate_models(run.model, list(run.baselines), inputs, thresholds, eval_run,
                                 baseline_names=list(run.names))
    # The model's tokenizations at each threshold are the ones eval measured: reuse them.
    reused = {(target.key, path): encoded
              for target, encodings in zip(thresholds, evaluation.pop("_encodings").values())
              for path, encoded in zip(inputs, encodings)}
    return evaluation, reused


def _model_entries(label: str, names: tuple[str, ...], adaptive: bool) -> list[dict]:
    models = [{"key": "elastic", "label": label, "detail": "adaptive: the fewest tokens per block that meet "
               "the target" if adaptive else label}]
    models += [{"key": f"b{i}", "label": f"fixed-length {name}",
                "detail": f"fixed-length baseline {name}, every block at {label}'s mean bits per block"}
               for i, name in enumerate(names)]
    return models


def _input_entry(run: ReportRun, path: str, targets: list[Target], reused: dict, scale: int, bar) -> dict:
    """One input's part of the page: its original, and every (target, model) setting."""
    entry: dict = {"name": Path(path).name, "source": str(path), "settings": {}}
    for target in targets:
        key = target.key
        encoded = reused.get((key, path)) or tokenize(run.model, path, target, search=run.search, window=run.window)
        decoded = _measured(run.model, encoded, path, run.window)
        info = encoded.info
        if "original" not in entry:
            entry.update(is_image=info.is_image, fps=info.fps, frames=1 if info.is_image else info.frames,
                         blocks=encoded.n_blocks, source_size=list(info.size),
                         original=_media_uri(decoded, info, scale, decoded.original))
        entry["settings"][f"{key}|elastic"] = _setting(decoded, encoded, target, _media_uri(decoded, info, scale))
        bar.update(1)
        bits = float(encoded.counts.float().mean()) * bits_per_token(run.model)
        for i, baseline in enumerate(run.baselines):  # at the model's mean bits per block
            share = bits / bits_per_token(baseline) / baseline.config.tokens_per_block
            b_encoded = tokenize(baseline, path, TokenCount(tokens_at_share(baseline.config, share)), window=run.window)
            b_decoded = _measured(baseline, b_encoded, path, run.window)
            entry["settings"][f"{key}|b{i}"] = _setting(b_decoded, b_encoded, target,
                                                        _media_uri(b_decoded, info, scale))
            bar.update(1)
    return entry


def build_report(model, inputs: list[str], targets: list[Target], baselines: list | None = None,
                 baseline_names: list[str] | None = None, fractions: list[float] | None = None,
                 search: str = "binary", window: int | None | str = "model", progress: bool = False,
                 selected: Target | None = None) -> dict:
    """Everything the page shows, as JSON-ready data (media as data URIs).

    The page opens on ``selected`` (default: the first threshold, else the first target).
    With baselines, each is shown per target at the model's mean bits per block (rounded to its
    tokens). With thresholds, the eval measurement of them (codecs included) is part of the page.
    """
    c = model.config
    baselines = list(baselines or [])
    names = list(baseline_names or [f"baseline{i}" for i in range(len(baselines))])
    _check_report_args(model, inputs, targets, baselines, names, selected)
    started = time.perf_counter()
    run = ReportRun(model, tuple(baselines), tuple(names), search, window, progress)
    thresholds = [t for t in targets if isinstance(t, Threshold)]
    evaluation, reused = _eval_section(run, inputs, thresholds, fractions)
    scale = display_scale(c.resolution)
    bar = progress_bar(total=len(inputs) * len(targets) * (1 + len(baselines)), desc="report", show=progress)
    pages = [_input_entry(run, path, targets, reused, scale, bar) for path in inputs]
    bar.close()
    return {
        "title": f"{model.display_name} report: " + ", ".join(Path(p).name for p in inputs),
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": round(time.perf_counter() - started, 1),
        "model": {"name": c.name, "tokens_per_block": c.tokens_per_block, "min_tokens": c.min_tokens,
                  "frames_per_block": c.frames_per_block, "resolution": list(c.resolution),
                  "family": model.display_name, "scale": scale},
        "targets": [{"key": t.key, "label": t.label(c.tokens_per_block), "threshold": isinstance(t, Threshold),
                     "psnr_db": t.psnr_db} for t in targets],
        "selected": (selected or (thresholds or targets)[0]).key,
        "models": _model_entries(model.display_name, run.names, bool(thresholds)),
        "inputs": pages,
        "eval": None if evaluation is None else _eval_entry(evaluation, names),
    }


def _eval_entry(evaluation: dict, names: list[str]) -> dict:
    """The page's eval section: the measurement, its tables as text, and its figures as SVG (the PNGs of eval)."""
    figures = [svg_text(share_figure(evaluation)), svg_text(rate_distortion_figure(evaluation))]
    return {"report": evaluation, "summary": _tables(summary_table(evaluation)), "baselines": names,
            "figures": figures}


def _tables(markdown: str) -> dict:
    """``summary_table``'s Markdown as a caption and tables (header, rows), so the page shows the same text."""
    caption, *chunks = markdown.strip().split("\n\n")
    tables = []
    for chunk in chunks:
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in chunk.splitlines()
                if line.startswith("|")]
        rows = [r for r in rows if not set("".join(r)) <= set("-")]
        if rows:
            tables.append({"header": rows[0], "rows": rows[1:]})
    return {"caption": caption.strip(), "tables": tables}


def render_html(report: dict) -> str:
    """The page: the template with its stylesheet, script and the report's JSON inlined."""
    data = json.dumps(report, separators=(",", ":"), allow_nan=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # inert inside <script>
    parts = {"{{title}}": html.escape(report["title"]), "/*{{style}}*/": (ASSETS / "report.css").read_text(),
             "/*{{script}}*/": (ASSETS / "report.js").read_text(), "{{data}}": data}
    template = (ASSETS / "report.html").read_text()
    return re.sub("|".join(re.escape(k) for k in parts), lambda m: parts[m.group(0)], template)


def write_report_html(report: dict, output: str | Path) -> Path:
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise ElasticTokError(f"{output}: the report is an HTML page; name it .html")
    page = render_html(report)
    with atomic_path(output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return output


def make_report(model, inputs: list[str], output: str | Path, targets: str | list[Target] = DEFAULT_REPORT_TARGETS,
                baselines: list | None = None, baseline_names: list[str] | None = None,
                fractions: str | list[float] | None = None, search: str = "binary",
                window: int | None | str = "model", progress: bool = False,
                selected: Target | str | None = None) -> str:
    """``elastictok report``: build the page and write it to ``output``; returns the line to print.

    ``targets`` and ``fractions`` may be their comma-separated text. ``selected`` is where the page
    opens when it is one of the targets (else the first threshold).
    """
    check_report_file(output, inputs)  # before the work, which takes minutes
    if isinstance(fractions, str):
        fractions = parse_fractions(fractions)
    if isinstance(targets, str):
        targets = parse_targets(targets, model.config.tokens_per_block)
    if isinstance(selected, str):
        selected = parse_target(selected)
    if selected is not None and selected.key not in {t.key for t in targets}:
        selected = None
    report = build_report(model, inputs, targets, baselines, baseline_names=baseline_names, fractions=fractions,
                          search=search, window=window, progress=progress, selected=selected)
    return summary_line(report, write_report_html(report, output))


def check_report_file(output: str | Path, inputs: list[str]) -> None:
    """Refuse a report page that could not be written (or would replace an input) before any work."""
    if Path(output).suffix.lower() not in (".html", ".htm"):
        raise ElasticTokError(f"{output}: the report is an HTML page; name it .html")
    check_output_file(output, *inputs, example="report.html")


def summary_line(report: dict, output: Path) -> str:
    inputs = ", ".join(f"{e['name']} ({e['blocks']} blocks)" for e in report["inputs"])
    return (f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB: {inputs}; {len(report['targets'])} targets"
            f"{'; eval section' if report['eval'] else ''}) in {report['seconds']:.0f} s")
