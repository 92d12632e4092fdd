"""WebDataset tar shards: building them from folders, and streaming training batches from them.

A shard is a tar of samples grouped by key (the WebDataset convention): ``KEY.mp4`` (a clip of at
most ``clip_frames`` frames, re-encoded at a reduced size) or ``KEY.jpg`` (an image), plus
``KEY.json`` (where it came from). Shards are written with ``webdataset.TarWriter`` and read
here with ``tarfile`` so that the order is ours to control: deterministic for a (seed, rank,
worker) and resumable from a batch position without decoding the skipped samples.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np
import torch
from PIL import Image

from ..media.io import VideoReader, VideoWriter, is_video, list_media, read_image
from ..media.transforms import resize_short_side, to_model
from ..utils.blocks import image_as_block
from ..utils.console import progress_bar
from ..utils.fileio import atomic_path, publish, read_small_file, remove_empty_folders
from ..utils.runtime import rank_and_world_size
from ..utils.seeds import stable_seed
from .datasets import random_crop
from ..errors import ElasticTokError

try:
    import fcntl
except ImportError:  # no flock (Windows): runs into one DST are not checked against each other
    fcntl = None

log = logging.getLogger(__name__)
JPEG_MAX_SIDE = 65500
LOCK_NAME = ".elastictok.lock"
JOURNAL_NAME = ".shard-run.json"  # the shards a build_shards run has written, while it runs
SHARD_NAME = re.compile(r"shard-\d{6,}\.tar")


# ---- output folders ------------------------------------------------------------------------------------------
class OutputFolder:
    """A run's output folder (``data shard``, ``tokenize-corpus``): made as needed, remembering which folders
    this run made, and held by this run alone while it writes.

    ``open`` takes an exclusive ``flock`` on ``DST/.elastictok.lock`` (holding this process's id), so that
    a second run into the same DST is refused in one line instead of both choosing the same shard numbers;
    ``close`` removes the lock file and then every folder this run made that is left empty. The lock is
    the kernel's, not the file's: a run that was killed leaves at most a stale file, which the next run
    simply locks again. Where there is no ``fcntl``, or the file system takes no locks, runs are unchecked.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path / LOCK_NAME
        self.made: list[Path] = []  # deepest first
        self.fd: int | None = None

    def open(self, lock: bool = True) -> "OutputFolder":
        for _ in range(20):
            self._make()
            if not lock or fcntl is None or self._lock():
                return self
        return self  # the folder kept vanishing under us (another run removing it as it ended): unchecked

    def close(self, remove_empty: bool = True) -> None:
        """Release the lock; with ``remove_empty``, remove the folders this run made that hold nothing."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.lock_path.unlink(missing_ok=True)  # before the lock goes: see _lock's inode check
            os.close(self.fd)
            self.fd = None
        if remove_empty:
            remove_empty_folders(self.made)
        self.made = []

    def remove_temporaries(self, *patterns: str) -> None:
        """Remove the files and folders matching ``patterns`` (glob, in DST) that a killed run left half-written;
        only while this run holds the lock, so that they cannot be a live run's."""
        if self.fd is None:
            return
        for pattern in patterns:
            for path in self.path.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)

    def _make(self) -> None:
        missing, folder = [], self.path
        while not (folder.exists() or folder.is_symlink()) and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # another run made it at the same moment: not ours to remove
                continue
            except OSError as exc:
                self.close()
                raise ElasticTokError(f"{self.path}: cannot create the folder ({exc.strerror or exc})") from None
            self.made.insert(0, folder)
        if not self.path.is_dir():
            self.close()
            raise ElasticTokError(f"{self.path}: is a file, not a folder")

    def _lock(self) -> bool:
        """True once this run holds the lock (or cannot take one); False to try again."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder went (a run ending removed it): make it again
            return False
        except OSError as exc:  # a read-only DST (it may hold only finished shards) or a full one: unchecked;
            log.debug("%s: no lock (%s)", self.lock_path, exc)  # whatever is written later says why it fails
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self.close()
                who = f"another run (pid {holder})" if holder else "another run"
                raise ElasticTokError(f"{self.path}: being written by {who}; wait for it to end, or name "
                                      "another DST") from None
            with contextlib.suppress(OSError):  # a file system without locks: unchecked, and no file left
                self.lock_path.unlink()
            log.debug("%s: no lock (%s)", self.lock_path, exc)
            return True
        try:
            current = os.stat(self.lock_path)
        except OSError:
            current = None
        opened = os.fstat(fd)
        if current is None or (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            os.close(fd)  # the run before removed this file between our open and our lock: lock the new one
            return False
        self.fd = fd
        with contextlib.suppress(OSError):  # who holds it, for the refusal line; a full disk may not take even that
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def __enter__(self) -> "OutputFolder":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


# ---- writing ------------------------------------------------------------------------------------------------
def _encode_clip(frames: torch.Tensor, fps: float, source: Path) -> bytes:
    """H.264 bytes of uint8 (T, H, W, 3) frames; a size the encoder refuses (20000x16) is ``source``'s fault."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        try:
            with VideoWriter(path, fps, crf=20) as writer:
                writer.write(frames)
        except av.error.FFmpegError as exc:
            raise ElasticTokError(f"{source}: a {frames.shape[2]}x{frames.shape[1]} clip cannot be encoded as "
                                  f"H.264 ({exc.strerror or exc})") from None
        return path.read_bytes()


def _encode_image(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_clips(writer, path: Path, stem: str, unique: Callable[[str], str], clip_frames: int, short_side: int,
                 fps: float | None) -> int:
    """Cut a video into clips of ``clip_frames`` (a tail of at least a quarter kept); returns the clips written."""
    reader = VideoReader(path, fps=fps)
    pending: list[torch.Tensor] = []
    index = start = 0

    def flush() -> None:
        nonlocal index, pending
        clip = torch.stack(pending)
        meta = {"source": str(path), "frames": len(clip), "fps": reader.fps, "start": start}
        writer.write({"__key__": unique(f"{stem}-{index:05d}"), "mp4": _encode_clip(clip, reader.fps, path),
                      "json": json.dumps(meta).encode()})
        index += 1
        pending = []

    shortest = max(1, clip_frames // 4)
    for number, frame in enumerate(reader):
        frame = frame if min(frame.shape[:2]) <= short_side else resize_short_side(frame[None], short_side)[0]
        if pending and frame.shape != pending[0].shape:  # the stream changed size: a clip holds one size
            if len(pending) >= shortest:
                flush()
            pending = []
        if not pending:
            start = number
        pending.append(frame)
        if len(pending) == clip_frames:
            flush()
    if len(pending) >= shortest:
        flush()
    if index == 0:
        raise ElasticTokError(f"{path}: too short for a clip (at least {shortest} frames of one size)")
    return index


def _write_image(writer, path: Path, stem: str, unique: Callable[[str], str], short_side: int) -> None:
    image = read_image(path)
    if min(image.shape[:2]) > short_side:
        image = resize_short_side(image[None], short_side)[0]
    if max(image.shape[:2]) > JPEG_MAX_SIDE:  # checked here: libjpeg would print its own line first
        raise ElasticTokError(f"{path}: {image.shape[1]}x{image.shape[0]} after resizing; a JPEG sample holds "
                              f"at most {JPEG_MAX_SIDE} pixels a side")
    payload = _encode_image(image)
    writer.write({"__key__": unique(stem), "jpg": payload, "json": json.dumps({"source": str(path)}).encode()})


class UniqueKeys:
    """Called with a sample's key: the key, or ``key-N`` if a sample of this run has it already (a/b.png and
    c/b.jpg; x-00000.png and x.mp4's first clip)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, key: str) -> str:
        candidate, n = key, 1
        while candidate in self.used:
            candidate, n = f"{key}-{n}", n + 1
        self.used.add(candidate)
        return candidate


@dataclass
class ShardSummary:
    shards: int = 0
    images: int = 0
    clips: int = 0
    skipped: int = 0


class _CannotWrite(Exception):
    """A shard could not be written (full disk, ...): not an input's fault, so never a skipped input."""

    def __init__(self, shard: Path, exc: OSError):
        super().__init__(f"{shard}: cannot write ({exc.strerror or exc})")


class _ShardWriter:
    """Samples into ``DST/shard-NNNNNN.tar`` from ``start``, at most ``size`` per shard. Each shard is written
    under a temporary name of its own and renamed when whole; ``discard`` removes an unfinished one. Every
    shard is named in ``DST/.shard-run.json`` (the run's journal) before it appears, so that the next run
    removes the shards of a run that was killed (``undo_killed_run``); ``close`` removes the journal."""

    def __init__(self, destination: Path, start: int, size: int):
        self.destination, self.number, self.size = destination, start, size
        self.written: list[Path] = []
        self.tar = self.stream = self.tmp = None
        self.count = 0

    @property
    def shard(self) -> Path:
        return self.destination / f"shard-{self.number:06d}.tar"

    def write(self, sample: dict) -> None:
        if self.tar is not None and self.count >= self.size:
            self.finish()
        try:
            if self.tar is None:
                import webdataset as wds

                fd, name = tempfile.mkstemp(prefix=f".{self.shard.name}.", suffix=".tmp", dir=self.destination)
                self.tmp, self.stream, self.count = Path(name), os.fdopen(fd, "wb"), 0
                self.tar = wds.TarWriter(self.stream)
            self.tar.write(sample)
        except OSError as exc:
            self.discard()
            raise _CannotWrite(self.shard, exc) from None
        self.count += 1

    def finish(self) -> None:
        """Complete the open shard, if any, and rename it into place."""
        if self.tar is None:
            return
        self.written.append(self.shard)  # before it appears: a Ctrl-C just after the rename still removes it
        try:
            self.tar.close()
            self.stream.close()
            with atomic_path(self.destination / JOURNAL_NAME) as tmp:  # and a SIGKILL: the next run removes it
                tmp.write_text(json.dumps({"shards": [p.name for p in self.written]}))
            publish(self.tmp, self.shard)
        except OSError as exc:
            self.written.pop()
            self.discard()
            raise _CannotWrite(self.shard, exc) from None
        self.tar = self.stream = self.tmp = None
        self.number += 1

    def close(self, keep: bool) -> None:
        """End the run: ``keep`` its shards, or drop the unfinished one and remove those it finished."""
        if not keep:
            self.discard()
            for shard in self.written:
                with contextlib.suppress(OSError):
                    shard.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.destination / JOURNAL_NAME).unlink(missing_ok=True)

    def discard(self) -> None:
        """Drop the unfinished shard (never raises: a full disk fails its closing writes again)."""
        for closing in (self.tar, self.stream):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing.close()
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                self.tmp.unlink(missing_ok=True)
        self.tar = self.stream = self.tmp = None


def build_shards(sources: list[str | os.PathLike], destination: str | os.PathLike, shard_size: int = 1000,
                 clip_frames: int = 32, short_side: int = 256, fps: float | None = None,
                 progress: bool = True) -> ShardSummary:
    """Write ``destination/shard-000000.tar`` ... from every readable image and video under ``sources``;
    into a folder that already holds shards, the new ones are numbered after them (nothing is overwritten).

    Videos are cut into clips of ``clip_frames`` frames (a shorter tail is kept if it has at least
    a quarter of that); media are resized to ``short_side`` (never enlarged). Each shard appears
    whole: it is written under a temporary name and renamed when complete. A run that fails or is
    interrupted removes every shard it wrote (a rerun would repeat them) and any folder it made; a
    second run into a DST that one is writing is refused (see ``OutputFolder``).
    """
    if shard_size < 1 or clip_frames < 1 or short_side < 8:
        raise ElasticTokError("shard size and clip frames must be positive, short side at least 8")
    destination = Path(destination)
    files = list_media(sources)
    if not files:
        raise ElasticTokError(f"no images or videos under {', '.join(map(str, sources))}")
    folder = OutputFolder(destination).open()
    summary = ShardSummary()
    writer = None
    try:  # numbered after the shards there, now that no other run can add any
        undo_killed_run(folder)
        existing = [p.stem.removeprefix("shard-") for p in destination.glob("shard-*.tar")]
        numbers = [int(n) for n in existing if n.isdigit()]
        writer = _ShardWriter(destination, max(numbers, default=-1) + 1, shard_size)
        _write_samples(writer, files, summary, clip_frames, short_side, fps, progress)
        writer.finish()
    except BaseException as exc:  # interrupted or failed: this run's shards go too, or a rerun would repeat them
        if writer is not None:
            writer.close(keep=False)
        folder.close()
        if isinstance(exc, _CannotWrite):
            raise ElasticTokError(str(exc)) from None
        raise
    writer.close(keep=True)
    summary.shards = len(writer.written)  # none if every input was unreadable: no empty shard, no empty folder
    folder.close()
    return summary


def _write_samples(writer: _ShardWriter, files: list[Path], summary: ShardSummary, clip_frames: int,
                   short_side: int, fps: float | None, progress: bool) -> None:
    """Every file's samples into ``writer``, counted in ``summary``; an unreadable file is skipped with a line."""
    unique = UniqueKeys()
    for path in progress_bar(files, desc="shards", unit="file", show=progress):
        stem = path.stem.replace(".", "_")
        try:
            if is_video(path):
                summary.clips += _write_clips(writer, path, stem, unique, clip_frames, short_side, fps)
            else:
                _write_image(writer, path, stem, unique, short_side)
                summary.images += 1
        except ElasticTokError as exc:
            log.warning("skipping %s", exc)
            summary.skipped += 1


def undo_killed_run(folder: OutputFolder) -> None:
    """Remove what a ``build_shards`` run into ``folder`` left when it was killed (SIGKILL, a power cut): the
    shards its journal names (a rerun writes them again; kept, they would be there twice) and its
    half-written temporaries. Only while holding the folder, so that they cannot be a live run's."""
    if folder.fd is None:
        return
    journal = folder.path / JOURNAL_NAME
    if journal.exists():
        for shard in _journal_shards(journal):
            (folder.path / shard).unlink(missing_ok=True)
        log.info("removed the shards of a run into %s that was killed before it ended", folder.path)
    folder.remove_temporaries(".shard-*.tar.*.tmp", f".{JOURNAL_NAME}.*.tmp")
    journal.unlink(missing_ok=True)


def _journal_shards(journal: Path) -> list[str]:
    """The shard names a run's journal holds, refused in one line unless every one is a shard's name."""
    try:
        names = json.loads(read_small_file(journal, "a shard run's journal").decode("utf-8"))
    except ValueError:
        names = None
    names = names.get("shards") if isinstance(names, dict) else None
    if not (isinstance(names, list) and all(isinstance(n, str) and SHARD_NAME.fullmatch(n) for n in names)):
        raise ElasticTokError(f"{journal}: damaged; it names the shards of a run that was killed, which a rerun "
                              "writes again: delete those and it")
    return names


# ---- reading -------------------------------------------------------------------------------------------------
def list_shards(paths: list[str | os.PathLike]) -> list[Path]:
    shards: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            shards.extend(sorted(entry.glob("*.tar")))
        elif entry.suffix == ".tar" and entry.is_file():
            shards.append(entry)
    return shards


def iter_shard(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(key, kind, payload) per media sample, kind 'video' or 'image'; a damaged tar ends with a warning."""
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                kind = ("video" if ext in ("mp4", "mkv", "webm", "avi")
                        else "image" if ext in ("jpg", "jpeg", "png", "webp") else None)
                if kind:
                    yield key, kind, tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as exc:
        log.warning("%s: unreadable shard, stopping it (%s)", path, exc)


def decode_sample(kind: str, payload: bytes) -> torch.Tensor:
    """uint8 (T, H, W, 3); images have T = 1."""
    try:
        if kind == "image":
            with Image.open(io.BytesIO(payload)) as image:
                return torch.from_numpy(np.array(image.convert("RGB")))[None]
        with av.open(io.BytesIO(payload)) as container:
            # One thread for decoding and colour conversion: a data worker is one process of several, and
            # FFmpeg's thread pools in a forked worker have been seen to wait forever on threads it lacks.
            stream = container.streams.video[0]
            stream.thread_count = 1
            frames = [torch.from_numpy(f.to_ndarray(format="rgb24", threads=1)) for f in container.decode(stream)]
        if not frames:
            raise ValueError("no frames")
        return torch.stack(frames)
    except Exception as exc:  # PIL and FFmpeg raise many types for damaged data
        raise ElasticTokError(f"undecodable {kind} sample ({exc})") from None


class ShardBatches(torch.utils.data.IterableDataset):
    """Endless training batches streamed from tar shards: ``(video, skipped)`` pairs, video
    (B, T, 3, H, W) in [-1, 1] and ``skipped`` the undecodable samples this worker has met so far.

    Each (rank, DataLoader worker) reads its own slice of a per-epoch shuffled shard list through
    a seeded shuffle buffer; whether its j-th batch holds video clips or images, and every crop
    in it, depend only on (seed, rank, worker, j). ``start_batch`` (global batches already
    consumed, as in a checkpoint) resumes exactly, for the same number of ranks and workers:
    skipped batches are replayed without decoding.
    """

    def __init__(self, shards: list[Path], resolution: tuple[int, int], frames_per_block: int, n_blocks: int,
                 batch_size: int, image_fraction: float, seed: int, start_batch: int = 0, buffer_size: int = 256,
                 rank: int | None = None, world_size: int | None = None):
        if not shards:
            raise ElasticTokError("no .tar shards found")
        self.shards, self.resolution, self.fpb, self.n_blocks = shards, resolution, frames_per_block, n_blocks
        self.batch_size, self.image_fraction, self.seed = batch_size, image_fraction, seed
        self.start_batch, self.buffer_size = start_batch, buffer_size
        group_rank, group_size = rank_and_world_size()
        self.rank = group_rank if rank is None else rank
        self.world_size = group_size if world_size is None else world_size
        self.skipped = 0

    def _stream(self, slot: int, slots: int, read: dict[str, int] | None = None) -> Iterator[tuple[str, bytes]]:
        """Samples of this slot's shards, epoch after epoch, through a seeded shuffle buffer; ``read`` counts
        the samples of each kind read from the shards and the epochs completed."""
        read = {"video": 0, "image": 0, "epochs": 0} if read is None else read
        buffer: list[tuple[str, bytes]] = []
        rng = np.random.default_rng(stable_seed(self.seed, "buffer", slot))
        while True:
            order = np.random.default_rng(stable_seed(self.seed, "epoch", read["epochs"])).permutation(len(self.shards))
            mine = [self.shards[i] for i in order[slot::slots]] or [self.shards[order[slot % len(self.shards)]]]
            before = read["video"] + read["image"]
            for shard in mine:
                for _, kind, payload in iter_shard(shard):
                    read[kind] += 1
                    buffer.append((kind, payload))
                    if len(buffer) >= self.buffer_size:
                        yield buffer.pop(rng.integers(len(buffer)))
            read["epochs"] += 1
            if read["video"] + read["image"] == before:  # a pass without a sample: the next finds none either
                raise ElasticTokError(f"no image or video samples in {len(mine)} shards ({mine[0]} ...)")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int] | ElasticTokError]:
        """Batches; in a DataLoader worker process, an ElasticTokError is handed on as the last item rather than
        raised (the DataLoader would wrap it in the worker's traceback): ``raise_worker_errors`` raises it."""
        if torch.utils.data.get_worker_info() is None:
            yield from self._batches()
            return
        try:
            yield from self._batches()
        except ElasticTokError as exc:
            yield exc

    def _batches(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info else 1
        # Global batch g comes from logical worker g % workers. The DataLoader asks its workers in turn
        # from worker 0, so on resuming, worker 0 plays the logical worker that owns start_batch.
        worker = ((info.id if info else 0) + self.start_batch) % workers
        slot, slots = self.rank * workers + worker, self.world_size * workers
        local_done = max(0, (self.start_batch - worker + workers - 1) // workers)
        read: dict[str, int] = {"video": 0, "image": 0, "epochs": 0}
        stream = self._stream(slot, slots, read)
        pools: dict[str, list[bytes]] = {"video": [], "image": []}
        j = 0
        while True:
            rng = np.random.default_rng(stable_seed(self.seed, "batch", self.rank, worker, j))
            want_images = rng.random() < self.image_fraction
            kind = "image" if want_images else "video"
            count = self.batch_size * self.n_blocks if want_images else self.batch_size
            while len(pools[kind]) < count:
                if read["epochs"] and not read[kind]:  # a whole pass over the shards held none
                    raise ElasticTokError(f"shards hold no {kind} samples; set image_fraction accordingly")
                sample_kind, payload = next(stream)
                pools[sample_kind].append(payload)
            payloads, pools[kind] = pools[kind][:count], pools[kind][count:]
            if j >= local_done:
                batch = self._make_batch(kind, payloads, rng)
                if batch is not None:
                    yield batch, self.skipped
            j += 1

    def _make_batch(self, kind: str, payloads: list[bytes], rng: np.random.Generator) -> torch.Tensor | None:
        length = self.n_blocks * self.fpb
        clips = []
        for payload in payloads:
            try:
                media = decode_sample(kind, payload)
            except ElasticTokError as exc:
                log.warning("skipping %s", exc)
                self.skipped += 1
                continue
            if kind == "image":
                clip = image_as_block(media, self.fpb)
            elif len(media) >= length:
                start = rng.integers(0, len(media) - length + 1)
                clip = media[start:start + length]
            else:  # a short clip: loop it to the needed length
                clip = media[torch.arange(length) % len(media)]
            clips.append(random_crop(clip, self.resolution, rng))
        if not clips:
            return None
        while len(clips) < len(payloads):  # keep the batch shape when a sample was bad
            clips.append(clips[len(clips) % max(1, len(clips))])
        return to_model(torch.stack(clips))


def raise_worker_errors(batches: Iterator) -> Iterator:
    """The batches of a DataLoader over ``ShardBatches``; an error a worker process handed on as an item is
    raised here, as the one line it would be without workers."""
    for item in batches:
        if isinstance(item, ElasticTokError):
            raise item
        yield item
