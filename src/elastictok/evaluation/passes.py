"""eval's measurements of its inputs, made in this process or on worker processes side by side.

An input is measured in passes over its blocks, each independent of the others: a model at its fixed
lengths (every length advancing together, one encoder pass per block for all), H.264 and JPEG at their
settings, and the model at thresholds. ``measure_here`` runs them in this process, an input at a time
(read once for the fixed lengths and codecs, once for the thresholds). With ``EvalRun.workers`` above one,
``measure_in_pool`` hands them to worker processes (``pool``), each threshold a pass of its own, the longest
passes first, one at a time to whichever worker is free. A pass computes the same numbers wherever it runs
on the same number of threads, so an eval on W workers gives, to the last digit, what this process gives
with each worker's share of the threads (``torch.get_num_threads() // W``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ElasticTokError
from ..media.blocks import MediaInfo
from ..tokenization.options import TokenizeOptions
from ..tokenization.scoring import Measured, tokenize_and_score
from ..tokenization.targets import Threshold, TokenCount
from ..tokenization.tokenfile import TokenizedVideo
from ..tokenization.tokenizer import read_source
from ..utils.runtime import module_device
from .anchors import bits_per_token, codec_points
from .pool import WorkerPool, pool_size

log = logging.getLogger(__name__)

DEFAULT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # of the all-token block PSNR: the default thresholds
FIXED, CODECS, THRESHOLDS = "fixed lengths", "codecs", "thresholds"  # the kinds of pass


@dataclass(frozen=True)
class EvalRun:
    """How eval tokenizes: the search, the context, the fixed lengths measured (as shares of each model's Mmax),
    and the worker processes measuring side by side (1: all in this process; never more than torch's threads
    here, see ``pool``)."""

    search: str = "binary"
    window: int | None | str = "model"
    fractions: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
    progress: bool = True
    workers: int = 1


@dataclass
class BlockScores:
    """Per-block quality of one tokenization (or codec setting) of one input, and the bits it used."""

    counts: np.ndarray  # tokens per block (empty for a codec)
    bits: float  # raw bits of the whole input
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # mse, psnr, ssim per block


def as_block_scores(model, encoded: TokenizedVideo, measured: Measured) -> BlockScores:
    """The scores of a tokenization; the counts copied (a worker sending ``encoded`` moves its tensors' memory into
    shared memory, and a view would then read freed memory)."""
    return BlockScores(encoded.counts.numpy().copy(), float(encoded.counts.sum()) * bits_per_token(model),
                       {k: np.array(v) for k, v in measured.metrics.items()})


def default_thresholds(scores: list[BlockScores], quantiles: tuple[float, ...] = DEFAULT_QUANTILES
                       ) -> list[Threshold]:
    """PSNR thresholds at ``quantiles`` of the model's own all-token block PSNR (rounded to 0.1 dB): a
    threshold at quantile q is within reach of about 1 - q of the blocks, whatever the model."""
    psnr = np.concatenate([s.metrics["psnr"] for s in scores])
    values = sorted({round(float(np.quantile(psnr, q)), 1) for q in quantiles}, reverse=True)
    return [Threshold("psnr", v) for v in values if v > 0]


@dataclass(frozen=True)
class Pass:
    """One pass over one input's blocks: ``kind``, the input (its place in the inputs and its path), and the
    model (its place among the models, the model itself last) or the thresholds."""

    kind: str
    input: int
    path: str
    model: int = -1
    thresholds: tuple[Threshold, ...] = ()


@dataclass
class Measurements:
    """Every pass's scores, ``fixed[model][length][input]`` and ``anchors[codec][setting][input]``, the thresholds
    and, per threshold key, the model's tokens and scores per input."""

    fixed: list[list[list[BlockScores]]]
    anchors: dict[str, list[list[BlockScores]]]
    thresholds: list[Threshold]
    adaptive: dict[str, list[tuple[TokenizedVideo, BlockScores]]]


# ---- one pass ---------------------------------------------------------------------------------------------
def _scored(model, info: MediaInfo, blocks: list, targets: list, run: EvalRun
            ) -> list[tuple[TokenizedVideo, BlockScores]]:
    """One input tokenized for each target and scored, in one pass (``tokenization.scoring.tokenize_and_score``)."""
    options = TokenizeOptions(search=run.search, window=run.window)
    return [(encoded, as_block_scores(model, encoded, measured))
            for encoded, measured in tokenize_and_score(model, info, blocks, targets, options)]


def _codec_scores(info: MediaInfo, blocks: list) -> dict[str, list[BlockScores]]:
    """Per codec, the scores of each setting (``anchors.codec_points``)."""
    return {codec: [BlockScores(np.zeros(0), point["bits"], {k: np.array(v) for k, v in point["metrics"].items()})
                    for point in points]
            for codec, points in codec_points(blocks, info.fps).items()}


def run_pass(step: Pass, models: list, lengths: list[list[int]], run: EvalRun, info: MediaInfo, blocks: list):
    """``step`` on the input's blocks: a list of scores per length (fixed lengths), per codec a list per setting
    (codecs), or a (tokens, scores) pair per threshold (thresholds). Logs its wall-clock and CPU seconds (DEBUG)."""
    started, cpu = time.perf_counter(), time.process_time()
    if step.kind == FIXED:
        counts = [TokenCount(n) for n in lengths[step.model]]
        result = [scores for _, scores in _scored(models[step.model], info, blocks, counts, run)]
    elif step.kind == CODECS:
        result = _codec_scores(info, blocks)
    else:
        result = _scored(models[-1], info, blocks, list(step.thresholds), run)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    log.debug("eval %s of %s: %.2f s (%.2f s of CPU time)", step.kind, step.path, seconds, cpu,
              extra={"eval_pass": step.kind, "seconds": seconds, "cpu_seconds": cpu})
    return result


def _units(step: Pass, lengths: list[list[int]]) -> int:
    """The progress bar's steps of a pass: its lengths, 1 for the codecs, its thresholds."""
    return len(lengths[step.model]) if step.kind == FIXED else 1 if step.kind == CODECS else len(step.thresholds)


# ---- every pass -------------------------------------------------------------------------------------------
def _first_passes(models: list, inputs: list[str]) -> list[Pass]:
    """Every input's fixed lengths and codecs: the model's own first (the default thresholds need them)."""
    own = [Pass(FIXED, i, p, len(models) - 1) for i, p in enumerate(inputs)]
    others = [Pass(FIXED, i, p, m) for i, p in enumerate(inputs) for m in range(len(models) - 1)]
    return own + others + [Pass(CODECS, i, p) for i, p in enumerate(inputs)]


def _threshold_passes(inputs: list[str], thresholds: list[Threshold]) -> list[Pass]:
    """Every input at every threshold, each a pass of its own (for workers: in this process one pass takes them all)."""
    return [Pass(THRESHOLDS, i, p, thresholds=(t,)) for i, p in enumerate(inputs) for t in thresholds]


def _collect(results: dict[Pass, object], models: list, lengths: list[list[int]], inputs: list[str],
             thresholds: list[Threshold]) -> Measurements:
    """The passes' results, in the order of the models, lengths, codecs, settings, thresholds and inputs."""
    fixed = [[[None] * len(inputs) for _ in counts] for counts in lengths]
    anchors: dict[str, list[list[BlockScores]]] = {}
    adaptive = {t.key: [None] * len(inputs) for t in thresholds}
    for step, result in results.items():
        if step.kind == FIXED:
            for per_input, scores in zip(fixed[step.model], result):
                per_input[step.input] = scores
        elif step.kind == CODECS:
            for codec, per_setting in result.items():
                for i, scores in enumerate(per_setting):
                    anchors.setdefault(codec, [[None] * len(inputs) for _ in per_setting])[i][step.input] = scores
        else:
            for target, measured in zip(step.thresholds, result):
                adaptive[target.key][step.input] = measured
    return Measurements(fixed, anchors, thresholds, adaptive)


def _own_all_tokens(results: dict[Pass, object], models: list, inputs: list[str]) -> list[BlockScores]:
    """The model's scores at its longest fixed length (every token), per input."""
    own = {step.input: result[-1] for step, result in results.items() if step.kind == FIXED
           and step.model == len(models) - 1}
    return [own[i] for i in range(len(inputs))]


def measure_here(models: list, lengths: list[list[int]], inputs: list[str], thresholds: list[Threshold] | None,
                 run: EvalRun, bar) -> Measurements:
    """Every pass in this process, an input at a time; ``thresholds`` None: ``default_thresholds``."""
    results: dict[Pass, object] = {}
    first = _first_passes(models, inputs)
    for i, path in enumerate(inputs):
        info, blocks = _read(models[-1], path)
        for step in [s for s in first if s.input == i]:
            results[step] = run_pass(step, models, lengths, run, info, blocks)
            bar.update(_units(step, lengths))
    if thresholds is None:
        thresholds = default_thresholds(_own_all_tokens(results, models, inputs))
    for i, path in enumerate(inputs):
        info, blocks = _read(models[-1], path)
        step = Pass(THRESHOLDS, i, path, thresholds=tuple(thresholds))  # together: one encoder pass per block
        results[step] = run_pass(step, models, lengths, run, info, blocks)
        bar.update(_units(step, lengths))
    return _collect(results, models, lengths, inputs, thresholds)


def _read(model, path: str) -> tuple[MediaInfo, list]:
    """An input's info and all its blocks, read at once (``read_source``: fitted as ``model`` tokenizes it)."""
    info, blocks = read_source(model, path)
    return info, list(blocks)


# ---- on worker processes ---------------------------------------------------------------------------------
def _pass_in_worker(state: dict, step: Pass):
    """``run_pass`` in a worker; the input it read last is kept, for the next pass over the same input."""
    models, read = state["models"], state.get("read")
    if read is None or read[0] != step.path:
        state["read"] = read = (step.path, *_read(models[-1], step.path))
    _, info, blocks = read
    autocast = torch.autocast("cpu", dtype=state["autocast"]) if state["autocast"] else contextlib.nullcontext()
    with autocast:
        return run_pass(step, models, state["lengths"], state["run"], info, blocks)


def measure_in_pool(models: list, lengths: list[list[int]], inputs: list[str], thresholds: list[Threshold] | None,
                    run: EvalRun, bar) -> Measurements:
    """Every pass on ``run.workers`` processes: each threshold of each input a pass of its own, handed out
    first (longest), once the model's own fixed lengths of every input gave them when ``thresholds`` is None."""
    if any(module_device(m).type != "cpu" for m in models):
        raise ElasticTokError("eval on several workers runs on the CPU: use one worker with another device")
    autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    waiting, results = _first_passes(models, inputs), {}
    own = {s for s in waiting if s.kind == FIXED and s.model == len(models) - 1}
    if thresholds is not None:
        waiting = _threshold_passes(inputs, thresholds) + waiting
    with WorkerPool(run.workers, {"models": models, "lengths": lengths, "run": run, "autocast": autocast}) as pool:
        while waiting or pool.idle < pool.workers:
            while waiting and pool.idle:
                step = waiting.pop(0)
                pool.submit(step, _pass_in_worker, step)
            for step, result in pool.done():
                results[step] = result
                bar.update(_units(step, lengths))
                if thresholds is None and own <= results.keys():
                    thresholds = default_thresholds(_own_all_tokens(results, models, inputs))
                    waiting = _threshold_passes(inputs, thresholds) + waiting
    return _collect(results, models, lengths, inputs, thresholds)


def measure(models: list, lengths: list[list[int]], inputs: list[str], thresholds: list[Threshold] | None,
            run: EvalRun, bar) -> Measurements:
    """Every pass, here or (``run.workers`` above one, torch allowed more than one thread) on worker processes."""
    if pool_size(run.workers) > 1:
        return measure_in_pool(models, lengths, inputs, thresholds, run, bar)
    return measure_here(models, lengths, inputs, thresholds, run, bar)
