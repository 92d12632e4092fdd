"""The ``.etok`` token file: safetensors (no pickle) with a header describing the tokens.

Tensors:
  ``counts`` int32 (n_blocks,): tokens kept per block
  ``scores`` float32 (n_blocks,): the metric achieved per block (NaN if not scored)
  ``tokens`` int32 (sum(counts),) FSQ code indices (int64 when the codebook exceeds 2**31 codes),
             or float32 (sum(counts), C) VAE latents;
             block k's tokens are the k-th run of ``counts[k]`` entries, in the model's token order.
Header (safetensors string metadata):
  ``format`` = "elastictok-tokens", ``version`` = "3" (versions 1 and 2 still read), ``model_name``,
  ``config_hash`` (a hash of the model's config: decoding with another model is refused),
  ``weights_hash`` (version 3: a digest of the weights, so that another training of the same config
  is refused too; older files have none and skip that check), ``max_tokens``,
  ``codebook_size`` (FSQ; 0 for VAE), ``metric``, ``fps`` ("" for images), ``height``/``width``
  (original size), ``frames`` (real frames; the last block may be padding past them), ``is_image``,
  ``source``, and
  ``counts``/``scores`` again as JSON lists so that tools can read them without tensors, and
  ``family`` (the model family, e.g. "flextok"; files without it were made by ElasticTok), and
  ``checksum`` (version 2): the SHA-256 of every other header field (canonical JSON) and the three
  tensors' bytes, so that any damaged byte is detected. Version 1 files (no checksum) still read.
  Optional fields (files without them still read): ``fit`` ("crop" or "pad": how the source was fitted
  to the model's frames; "" or absent: it was not resized), ``target`` (the target as text, e.g.
  "mse:0.05"), ``met`` (a JSON list: whether each block met it) and ``sampler`` (a JSON object
  ``{"steps", "guidance", "seed"}``: how a sampling family's decoder drew the frames the scores measure,
  and decodes them again; "" or absent: the family has no sampler, or the file predates it and
  decodes with the model's defaults).
Every header field is also checked against the model that decodes the file (``check_compatible``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from safetensors.torch import load, save

from ..errors import ElasticTokError
from ..media.blocks import MediaInfo
from ..media.limits import FPS_RANGE, MAX_SIDE, is_valid_fps
from ..models.coder import SAMPLER_FIELDS, Sampler
from ..utils.fileio import atomic_path, check_input_file
from ..utils.console import counted

FORMAT, VERSION = "elastictok-tokens", "3"
READABLE_VERSIONS = ("1", "2", "3")
MAX_FILE_BYTES = 2**31


@dataclass
class TokenizedVideo:
    """The tokens of one video or image, block by block, and what is needed to restore it (an .etok file in memory)."""

    counts: Tensor  # (n_blocks,) long: tokens kept per block
    tokens: Tensor  # FSQ: (sum(counts),) long code indices; VAE: (sum(counts), C) float latents
    scores: Tensor  # (n_blocks,) float: the target metric per block (MSE for a fixed count or budget)
    metric: str
    info: MediaInfo
    model_name: str
    config_hash: str
    max_tokens: int
    passes: int = 0  # decoder passes that scored candidates, over the batch this input was tokenized in
    encoder_passes: int = 0  # encoder forward passes over that batch (one per block for mask-free encoders)
    evaluations: int = 0  # candidate counts scored (one decoded block each) for this input
    seconds: float = 0.0
    family: str = "elastictok"  # the model family that made the tokens
    codebook_size: int | None = None  # as a token file's header states it (None: made in this process)
    weights_hash: str = ""  # the making model's weights_digest() ("" in files older than version 3)
    target: str = ""  # the target as text: "mse:0.05", "tokens:64", "budget:5000" ("" in older files)
    met: Tensor | None = None  # (n_blocks,) bool: whether each block met the target (None: not recorded)
    sampler: Sampler | None = None  # the sampler the scores were measured with (None: the family has none)

    @property
    def n_blocks(self) -> int:
        return len(self.counts)

    @property
    def blocks_met(self) -> int | None:
        """How many blocks met the target (None when not recorded, as in older token files)."""
        return None if self.met is None else int(self.met.sum())

    def met_line(self) -> str:
        """``"17 of 20 blocks met mse:0.05"``."""
        if self.met is None:
            return f"{counted(self.n_blocks, 'block')}; whether they met {self.target or 'the target'} is not recorded"
        return f"{self.blocks_met} of {counted(self.n_blocks, 'block')} met {self.target}"

    def block_tokens(self) -> list[Tensor]:
        """Each block's token ids as its own sequence: block k's first ``counts[k]`` tokens in the model's
        order (a list of ``n_blocks`` tensors; FSQ ids in ``[0, codebook_size)``, or VAE latents (n, C))."""
        return list(torch.split(self.tokens, self.counts.tolist()))

    def __repr__(self) -> str:
        mean = self.counts.float().mean().item() if self.n_blocks else 0.0
        return (f"TokenizedVideo({Path(self.info.source).name}: {mean:.1f}/{self.max_tokens} tokens per block, "
                f"{self.met_line()}; model {self.model_name!r})")


def index_dtype(codebook_size: int) -> torch.dtype:
    """FSQ indices are stored as int32 unless the codebook needs more."""
    return torch.int32 if codebook_size <= 2**31 else torch.int64


def write_etok(path: str | os.PathLike, encoded: TokenizedVideo, codebook_size: int | None = None) -> None:
    """Write an .etok file atomically. ``codebook_size`` defaults to the one ``encoded`` records (the model's)."""
    blob = etok_bytes(encoded, codebook_size)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


def etok_bytes(encoded: TokenizedVideo, codebook_size: int | None = None) -> bytes:
    """The .etok encoding of ``encoded``, in memory (token shards hold these)."""
    header, tensors = _encoded(encoded, codebook_size)
    return _sorted_header(save(tensors, metadata=header))


def _sorted_header(blob: bytes) -> bytes:
    """safetensors bytes with the header's keys sorted: safetensors writes the metadata in hash order, which
    differs from call to call, so identical tokens would not give identical files. Padded with spaces to a
    multiple of 8 bytes, as safetensors pads it; the tensors' offsets count from the end of the header."""
    length = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + length]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    header_bytes = header.encode() + b" " * (-len(header.encode()) % 8)
    return len(header_bytes).to_bytes(8, "little") + header_bytes + blob[8 + length:]


def _codebook_of(encoded: TokenizedVideo, codebook_size: int | None) -> int:
    """The codebook size to write: the one given, else the one the tokens record (VAE latents: 0)."""
    if codebook_size is not None:
        return codebook_size
    if encoded.codebook_size is not None:
        return encoded.codebook_size
    if encoded.tokens.is_floating_point():
        return 0
    raise ElasticTokError("these tokens do not record their codebook size: pass codebook_size (model.codebook_size)")


def check_tokenized(encoded: TokenizedVideo, codebook_size: int | None = None) -> None:
    """Refuse, in one line, what the reader would refuse: so that what is written reads back, and what is
    decoded from memory holds together (counts that add up to the tokens, indices in the codebook ...)."""
    _encoded(encoded, codebook_size)


# what each field of a TokenizedVideo must hold, checked before any is used (one may have been edited)
FIELD_KINDS: dict[str, tuple[type, str]] = {
    "counts": (Tensor, "a tensor"), "tokens": (Tensor, "a tensor"), "scores": (Tensor, "a tensor"),
    "info": (MediaInfo, "a MediaInfo"), "max_tokens": (int, "a whole number"), "metric": (str, "text"),
    "model_name": (str, "text"), "config_hash": (str, "text"), "family": (str, "text"), "weights_hash": (str, "text"),
    "target": (str, "text"), "sampler": ((Sampler, type(None)), "a Sampler or None")}


def check_is_tokenized(encoded: object) -> None:
    """A TokenizedVideo whose fields hold the kinds of value they should (integer counts among them)."""
    if not isinstance(encoded, TokenizedVideo):
        raise ElasticTokError(f"expected a TokenizedVideo or an .etok path, got {type(encoded).__name__}")
    for name, (kind, words) in FIELD_KINDS.items():
        value = getattr(encoded, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ElasticTokError(f"these tokens do not hold together: {name} must be {words}, "
                                  f"got {type(value).__name__}")
    if encoded.counts.is_floating_point() or encoded.counts.is_complex() or encoded.counts.dtype == torch.bool:
        raise ElasticTokError(f"these tokens do not hold together: counts must be whole numbers, "
                              f"got {encoded.counts.dtype}")


def _encoded(encoded: TokenizedVideo, codebook_size: int | None) -> tuple[dict[str, str], dict[str, Tensor]]:
    """The header and tensors of ``encoded`` as written, checked by the reader's own validator."""
    check_is_tokenized(encoded)
    codebook_size = _codebook_of(encoded, codebook_size)
    if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) or codebook_size < 0:
        raise ElasticTokError(f"codebook_size must be a whole number >= 0 (0: VAE latents), got {codebook_size!r}")
    if encoded.tokens.is_floating_point() == (codebook_size > 0):
        raise ElasticTokError(f"{'float' if encoded.tokens.is_floating_point() else 'integer'} tokens do not go "
                              f"with codebook_size {codebook_size} (FSQ indices are integers, VAE latents floats)")
    try:
        header, tensors = _header_and_tensors(encoded, codebook_size)
    except (AttributeError, TypeError, ValueError, IndexError) as exc:  # fields of the wrong kind
        raise ElasticTokError(f"these tokens do not hold together ({type(exc).__name__}: {exc})") from None
    not_text = [key for key, value in header.items() if not _is_utf8(value)]
    if not_text:
        raise ElasticTokError(f"these tokens do not hold together: {not_text[0]} is not valid text (a lone surrogate)")
    _validate("these tokens", header, tensors)
    return header, tensors


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _header_and_tensors(encoded: TokenizedVideo, codebook_size: int) -> tuple[dict[str, str], dict[str, Tensor]]:
    tokens = encoded.tokens.to(index_dtype(codebook_size)) if codebook_size > 0 else encoded.tokens.float()
    info = encoded.info
    header = {
        "format": FORMAT, "version": VERSION, "model_name": encoded.model_name, "config_hash": encoded.config_hash,
        "max_tokens": str(encoded.max_tokens), "codebook_size": str(codebook_size), "metric": encoded.metric,
        "fps": "" if info.fps is None else repr(float(info.fps)), "height": str(info.size[0]),
        "width": str(info.size[1]), "frames": str(info.frames), "is_image": str(int(info.is_image)),
        "source": _text(info.source), "counts": json.dumps(encoded.counts.tolist()),
        "scores": json.dumps([None if math.isnan(s) else s for s in encoded.scores.tolist()]),
        "family": encoded.family, "weights_hash": encoded.weights_hash, "fit": info.fit or "",
        "target": encoded.target, "met": "" if encoded.met is None else json.dumps([bool(m) for m in encoded.met.tolist()]),
        "sampler": "" if encoded.sampler is None else json.dumps(encoded.sampler.to_dict()),
    }
    tensors = {"counts": encoded.counts.to(torch.int32).contiguous(), "scores": encoded.scores.float().contiguous(),
               "tokens": tokens.contiguous()}
    header["checksum"] = _checksum(header, tensors)
    return header, tensors


def _text(name: str) -> str:
    """A file name as valid UTF-8 for the header: bytes that are not (kept by Python as surrogates) become U+FFFD."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that no file name holds (made through the Python API)
        return name.encode("utf-8", "replace").decode("utf-8")


def _checksum(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the header fields other than the checksum and of the tensors' bytes."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "checksum"}, sort_keys=True).encode())
    for name in ("counts", "scores", "tokens"):
        tensor = tensors[name]
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        flat = tensor.contiguous().reshape(-1)  # a 0-d tensor has no bytes view; its shape is in the digest
        digest.update(flat.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def read_etok(path: str | os.PathLike) -> TokenizedVideo:
    """Read and validate an .etok file; anything malformed raises ElasticTokError with one line."""
    path = check_input_file(path, "a token file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ElasticTokError(f"{path}: {size} bytes is too large for a token file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ElasticTokError(f"{path}: no such file") from None
    except OSError as exc:
        raise ElasticTokError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_etok(data, str(path))


def parse_etok(data: bytes, name: str = "<bytes>") -> TokenizedVideo:
    """Validate and decode .etok bytes; ``name`` labels error messages."""
    path = name
    try:
        tensors = load(data)
        header = _metadata(data)
    except ElasticTokError:
        raise
    except Exception as exc:  # safetensors reports damage with several exception types
        reason = str(exc).splitlines()[0][:120]
        raise ElasticTokError(f"{path}: not a token file ({type(exc).__name__}: {reason})") from None
    return _validate(path, header, tensors)


def _metadata(data: bytes) -> dict[str, str]:
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ElasticTokError("header metadata is not a mapping")
    return metadata


def _validate(path: Path, header: dict[str, str], tensors: dict[str, torch.Tensor]) -> TokenizedVideo:
    def fail(why: str):
        raise ElasticTokError(f"{path}: malformed token file: {why}")

    if header.get("format") != FORMAT:
        fail("not an elastictok token file (no format header)")
    if header.get("version") not in READABLE_VERSIONS:
        fail(f"format version {header.get('version')!r} is not supported (this reader: {VERSION})")
    if set(tensors) != {"counts", "scores", "tokens"}:
        fail(f"expected tensors counts, scores, tokens; found {sorted(tensors)}")
    if header["version"] != "1" and header.get("checksum") != _checksum(header, tensors):
        fail("checksum mismatch: the file is damaged")
    try:
        fields = _fields(header)
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        fail(f"bad or missing header field ({type(exc).__name__}: {str(exc)[:80]})")
    _check_tensors(fail, fields, tensors)
    _check_info(fail, fields, len(tensors["counts"]))
    codebook = fields["codebook"]
    info = MediaInfo(fields["source"], fields["fps"], (fields["height"], fields["width"]), fields["frames"],
                     fields["is_image"], fit=fields["fit"] or None)
    tokens = tensors["tokens"]
    met = None if fields["met"] is None else torch.tensor(fields["met"], dtype=torch.bool)
    return TokenizedVideo(counts=tensors["counts"].long(), tokens=tokens.long() if codebook > 0 else tokens,
                          scores=tensors["scores"], metric=fields["metric"], info=info,
                          model_name=fields["model_name"], config_hash=fields["config_hash"],
                          max_tokens=fields["max_tokens"], family=fields["family"], codebook_size=codebook,
                          weights_hash=fields["weights_hash"], target=fields["target"], met=met,
                          sampler=_sampler(fail, fields["sampler"]))


def _fields(header: dict[str, str]) -> dict:
    """The header's fields, parsed (KeyError, ValueError, TypeError or RecursionError when one is missing or
    malformed)."""
    return {
        "max_tokens": int(header["max_tokens"]), "codebook": int(header["codebook_size"]),
        "frames": int(header["frames"]), "height": int(header["height"]), "width": int(header["width"]),
        "fps": float(header["fps"]) if header["fps"] else None, "is_image_field": header["is_image"],
        "is_image": header["is_image"] == "1", "listed_counts": json.loads(header["counts"]),
        "model_name": header["model_name"], "config_hash": header["config_hash"], "metric": header["metric"],
        "source": header["source"], "family": header.get("family", "elastictok"),
        "weights_hash": header["weights_hash"] if header["version"] not in ("1", "2") else "",
        "fit": header.get("fit", ""), "target": header.get("target", ""),
        "met": json.loads(header["met"]) if header.get("met") else None,
        "sampler": json.loads(header["sampler"]) if header.get("sampler") else None,
    }


def _sampler(fail, recorded) -> Sampler | None:
    """The header's sampler object, checked: exactly steps, guidance and seed, each in range."""
    if recorded is None:
        return None
    if not isinstance(recorded, dict) or sorted(recorded) != sorted(SAMPLER_FIELDS):
        fail(f"sampler must be an object of {', '.join(SAMPLER_FIELDS)}")
    try:
        return Sampler(**recorded)
    except ElasticTokError as exc:
        fail(str(exc))


def _check_tensors(fail, fields: dict, tensors: dict[str, torch.Tensor]) -> None:
    counts, scores, tokens = tensors["counts"], tensors["scores"], tensors["tokens"]
    max_tokens, codebook = fields["max_tokens"], fields["codebook"]
    if not 0 < max_tokens < 2**31 or not 0 <= codebook < 2**63:  # before any comparison with a tensor
        fail(f"max_tokens {max_tokens} or codebook_size {codebook} is out of range")
    if counts.dtype != torch.int32 or counts.dim() != 1 or len(counts) == 0:
        fail("counts must be a non-empty int32 vector")
    if scores.shape != counts.shape or scores.dtype != torch.float32:
        fail("scores must be float32 with one entry per block")
    if fields["listed_counts"] != counts.tolist():
        fail("the header's counts disagree with the counts tensor")
    if counts.min() < 1 or counts.max() > max_tokens:
        fail(f"block counts must lie in [1, {max_tokens}]")
    n = int(counts.sum())
    if codebook > 0:
        expected = index_dtype(codebook)
        if tokens.dtype != expected or tokens.shape != (n,):
            fail(f"FSQ tokens must be {str(expected).removeprefix('torch.')} of shape ({n},), "
                 f"got {tokens.dtype} {tuple(tokens.shape)}")
        if n and (tokens.min() < 0 or tokens.max() >= codebook):
            fail(f"token indices outside [0, {codebook})")
    else:
        if tokens.dtype != torch.float32 or tokens.dim() != 2 or tokens.shape[0] != n:
            fail(f"VAE tokens must be float32 of shape ({n}, C)")
        if not torch.isfinite(tokens).all():
            fail("VAE latents are not finite")


def _check_info(fail, fields: dict, n_blocks: int) -> None:
    height, width, fps, frames = fields["height"], fields["width"], fields["fps"], fields["frames"]
    if fields["is_image_field"] not in ("0", "1"):
        fail(f"is_image must be 0 or 1, got {fields['is_image_field']!r}")
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        fail(f"size {height}x{width} is outside 1..{MAX_SIDE} pixels a side")
    if fps is not None and not is_valid_fps(fps):
        fail(f"fps {fps} is outside {FPS_RANGE}")
    if fields["is_image"] and (n_blocks != 1 or frames != 1):
        fail(f"an image is one block of one frame, got {n_blocks} blocks of {frames} frames")
    if frames < 1:
        fail(f"frames must be at least 1, got {frames}")
    if fields["fit"] not in ("", "crop", "pad"):
        fail(f"fit must be crop or pad, got {fields['fit']!r}")
    met = fields["met"]
    if met is not None and (not isinstance(met, list) or len(met) != n_blocks
                            or not all(isinstance(m, bool) for m in met)):
        fail(f"met must list true or false for each of the {n_blocks} blocks")
