"""Tokenize a whole corpus into WebDataset shards of .etok files, under plain python or torchrun.

Inputs (sorted) are grouped into shards of ``shard_size``; shard s belongs to rank s % world.
On one machine without torchrun, ``workers`` processes share the cores instead
(``tokenization.workers.TokenizerPool``: cores // workers threads each).
Each finished shard is ``DST/tokens-NNNNNN.tar`` (``KEY.etok`` + ``KEY.json`` per input) with a
``tokens-NNNNNN.json`` summary beside it (its inputs, counts, and the model, target and options that
made it), both renamed into place only when complete: after a crash, rerunning skips every
finished shard, and a DST holding another run's shards is refused rather than mixed in, as is a DST
that another run is writing at the moment (``shards.OutputFolder``: a lock held for the run). Unreadable
inputs are listed, not fatal; a dead worker process stops the run before its shard is finished, so
a rerun tokenizes that shard again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..media.io import list_media
from ..errors import ElasticTokError
from ..utils.console import progress_bar
from ..utils.fileio import atomic_path, read_small_file
from ..tokenization.files import tokenize_each
from ..tokenization.options import TokenizeOptions
from ..tokenization.workers import WorkerDiedError
from ..tokenization.targets import Target
from ..utils.runtime import distributed_ready, rank_and_world_size
from ..tokenization.tokenfile import etok_bytes
from .shards import OutputFolder, UniqueKeys

log = logging.getLogger(__name__)


@dataclass
class CorpusSummary:
    inputs: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    failed: int = 0
    blocks: int = 0
    tokens: int = 0
    max_tokens: int = 0  # what fixed-length tokenization would have used

    def add(self, record: dict, shard: str) -> None:
        """Count one shard's record (``tokens-NNNNNN.json``); ``shard``: "written", "done" (by an earlier
        run) or "empty" (every input failed, so nothing was written)."""
        self.shards_written += int(shard == "written")
        self.shards_skipped += int(shard == "done")
        self.inputs += record["inputs"]
        self.failed += len(record["failed"])
        self.blocks += record["blocks"]
        self.tokens += record["tokens"]
        self.max_tokens += record["max_tokens"]

    def line(self) -> str:
        share = self.tokens / self.max_tokens if self.max_tokens else 0.0
        return (f"{self.inputs} inputs, {self.blocks} blocks, {self.tokens} tokens ({100 * share:.1f}% of all "
                f"{self.max_tokens}, {self.tokens / max(1, self.blocks):.1f} per block); shards: "
                f"{self.shards_written} written, {self.shards_skipped} already done; {self.failed} inputs failed")


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(payload), int(time.time())
    tar.addfile(info, io.BytesIO(payload))


def tokenize_corpus(model, sources: list, destination: str | Path, target: Target,
                    options: TokenizeOptions | None = None, shard_size: int = 100, progress: bool = True,
                    workers: int = 1, bf16: bool = False) -> CorpusSummary:
    """Tokenize every image and video under ``sources``; returns the summary over all ranks.

    ``options`` say how each input is tokenized (search, window, fps ...); ``workers`` processes
    share the cores (``bf16``: their autocast; with one worker, the caller's threads and autocast).
    """
    if shard_size < 1:
        raise ElasticTokError(f"shard_size must be at least 1, got {shard_size}")
    destination = Path(destination)
    files = list_media(sources)
    if not files:
        raise ElasticTokError(f"no images or videos under {', '.join(map(str, sources))}")
    distributed = distributed_ready()
    if distributed and workers > 1:
        raise ElasticTokError("--workers shares one machine's cores; under torchrun every rank is the worker")
    rank, world = rank_and_world_size()
    folder = _open_destination(destination, distributed, rank)
    try:
        local = _tokenize_shards(model, files, sources, destination, target, options, shard_size, progress, workers,
                                 bf16, rank, world)
        fields = ("inputs", "shards_written", "shards_skipped", "failed", "blocks", "tokens", "max_tokens")
        if distributed:
            totals = torch.tensor([getattr(local, f) for f in fields], dtype=torch.long)
            dist.all_reduce(totals)  # every rank has finished its shards: rank 0 may release DST after this
            return CorpusSummary(*totals.tolist())
        return local
    finally:  # no folder this run made is left empty (under torchrun another rank may still be writing one)
        folder.close(remove_empty=not distributed)


def _open_destination(destination: Path, distributed: bool, rank: int) -> OutputFolder:
    """DST, made if needed and held by this run (without the half-written files of a run that was killed):
    refused in one line while another run writes it. Under torchrun rank 0 holds it for all ranks, and every
    rank refuses together (none is left waiting)."""
    folder = OutputFolder(destination)
    try:
        folder.open(lock=not distributed or rank == 0)
        folder.remove_temporaries(".tokens-*.tar.*.tmp", ".tokens-*.json.*.tmp")  # a killed run's, before any rank writes
        refusal = None
    except ElasticTokError as exc:
        if not distributed:
            raise
        refusal = exc
    if distributed:
        refused = torch.tensor([int(refusal is not None)], dtype=torch.long)
        dist.all_reduce(refused)
        if refused.item():
            folder.close(remove_empty=False)
            raise refusal or ElasticTokError(f"{destination}: cannot be written by this run (rank 0 says why)")
    return folder


def _tokenize_shards(model, files: list[Path], sources: list, destination: Path, target: Target,
                     options: TokenizeOptions | None, shard_size: int, progress: bool, workers: int, bf16: bool,
                     rank: int, world: int) -> CorpusSummary:
    """This rank's shards: the finished ones counted, the others tokenized and written."""
    root = Path(sources[0]) if len(sources) == 1 and Path(sources[0]).is_dir() else None
    n_shards = -(-len(files) // shard_size)
    shards = {s: files[s * shard_size:(s + 1) * shard_size] for s in range(n_shards) if s % world == rank}
    local = CorpusSummary()
    bar = progress_bar(total=sum(map(len, shards.values())), unit="file", desc=f"rank {rank}", show=progress,
               position=rank)
    options = TokenizeOptions.build(options, progress=False)
    run = {"model": model.weights_digest(), "target": str(target), "search": options.search,
           "window": options.resolve_window(model), "fps": options.fps, "fit": options.fit,
           "candidates": options.candidates, "warm_start": options.warm_start, "bf16": bf16,
           "length_head": _digest(options.length_head)}
    sampler = options.resolve_sampler(model)
    if sampler is not None:  # a sampling family's frames, and so its scores, depend on it
        run["sampler"] = sampler.to_dict()
    pending = {}
    for shard, members in shards.items():
        record = _finished(destination / f"tokens-{shard:06d}.json", members, run)
        if record is not None:
            local.add(record, "done")
            bar.update(len(members))
        else:
            pending[shard] = members
    inputs = [p for members in pending.values() for p in members]
    with torch.no_grad(), contextlib.closing(tokenize_each(model, inputs, target, options, workers, bf16)) as results:
        for shard, members in pending.items():
            local.add(*_write_shard(model, destination, shard, members, results, root, bar, run))
    bar.close()
    return local


def _digest(module: torch.nn.Module | None) -> str | None:
    """A short hash of a module's weights (e.g. a length head), None for none."""
    if module is None:
        return None
    sha = hashlib.sha256()
    for tensor in module.state_dict().values():
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def _finished(summary: Path, members: list[Path], run: dict) -> dict | None:
    """The record of a shard an earlier run finished (None if it did not): the same inputs, model, target
    and options, or one line saying that DST holds another run's shards (a rerun never mixes runs)."""
    if not (summary.exists() and summary.with_suffix(".tar").exists()):
        return None
    try:
        record = json.loads(read_small_file(summary, "a shard summary", limit=64 << 20).decode("utf-8"))
    except ValueError:
        record = None
    counts = ("inputs", "blocks", "tokens", "max_tokens")
    if not (isinstance(record, dict) and all(type(record.get(k)) is int for k in counts)
            and isinstance(record.get("failed"), list)):
        raise ElasticTokError(f"{summary}: a damaged shard summary; delete it and its .tar to tokenize that "
                              "shard again")
    if "run" not in record:
        raise ElasticTokError(f"{summary}: written by an older elastictok, which did not record what made a shard; "
                              "name a new DST, or delete its shards to start again")
    if record.get("members") != [str(p) for p in members] or record.get("run") != run:
        raise ElasticTokError(f"{summary.parent}: holds shards of other inputs, another model, target or options "
                              f"({summary.name}); name a new DST, or delete them to start again")
    return record


def _write_shard(model, destination: Path, shard: int, members: list[Path], results, root: Path | None, bar,
                 run: dict) -> tuple[dict, str]:
    """Write ``tokens-NNNNNN.tar`` and its summary (with ``run``, what made it) from the next
    ``len(members)`` of ``results``; return the summary and "written", or "empty" when every input failed."""
    record = {"inputs": len(members), "failed": [], "blocks": 0, "tokens": 0, "max_tokens": 0,
              "members": [str(p) for p in members], "run": run}
    try:
        _fill_shard(model, destination, shard, members, results, root, bar, record)
    except _NothingToWrite:  # no shard and no summary: a rerun tries these inputs again
        return record, "empty"
    try:
        with atomic_path(destination / f"tokens-{shard:06d}.json") as tmp:
            tmp.write_text(json.dumps(record))
    except BaseException:  # a shard without its summary would be tokenized again: leave neither
        (destination / f"tokens-{shard:06d}.tar").unlink(missing_ok=True)
        raise
    return record, "written"


class _NothingToWrite(Exception):
    """Every input of a shard failed."""


def _fill_shard(model, destination: Path, shard: int, members: list[Path], results, root: Path | None, bar,
                record: dict) -> None:
    """Write ``tokens-NNNNNN.tar`` from the next ``len(members)`` of ``results``, counting into ``record``."""
    unique = UniqueKeys()  # clip.mp4 and clip.jpg, a.b.mp4 and a_b.mp4: one tar member name each
    with atomic_path(destination / f"tokens-{shard:06d}.tar") as tmp, tarfile.open(tmp, "w") as tar:
        for index, (path, encoded) in enumerate(zip(members, results)):
            bar.update(1)
            if isinstance(encoded, WorkerDiedError):
                raise encoded  # not the input's fault: leave the shard unfinished for a rerun
            if isinstance(encoded, ElasticTokError):
                log.warning("skipping %s", encoded)
                record["failed"].append(str(path))
                continue
            key = str(path.relative_to(root).with_suffix("")) if root else f"{shard:06d}-{index:05d}-{path.stem}"
            key = unique(key.replace("/", "__").replace(".", "_"))
            counts = encoded.counts.tolist()
            _add_bytes(tar, f"{key}.etok", etok_bytes(encoded, model.codebook_size))
            _add_bytes(tar, f"{key}.json", json.dumps({"source": str(path), "tokens_per_block": counts}).encode())
            record["blocks"] += len(counts)
            record["tokens"] += sum(counts)
            record["max_tokens"] += len(counts) * encoded.max_tokens
        if len(record["failed"]) == len(members):
            raise _NothingToWrite
