"""What a reader can trust beside a tokenizer: standard codecs on the same frames, and the tokens' real size.

- Codecs: H.264 (libx264 through PyAV) and JPEG (Pillow) code the very blocks the model sees (fitted
  to its resolution, padding frames included) at a sweep of settings; each setting is one
  rate-distortion point, scored per block by ``tokenization.scoring.block_scores`` like the model.
  Bits are the codec's payload (H.264 packets, JPEG files), no container.
- Tokens: raw bits (``log2(codebook)`` per token), the order-0 empirical entropy of the indices (what
  an ideal entropy coder with the stream's own histogram would spend, the table not counted) and
  LZMA on the indices as 32-bit integers (a real compressor, table and all).
"""

from __future__ import annotations

import io
import lzma
import math
import platform
from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image

from ..media.transforms import to_model
from ..tokenization.scoring import block_scores
from ..tokenization.tokenfile import TokenizedVideo

JPEG_QUALITIES = (1, 5, 10, 20, 35, 50, 75, 90)
H264_CRFS = (51, 45, 39, 33, 27, 21)
CODECS = ("H.264", "JPEG")
# One thread, lookahead included; on x86-64, x264's SSE2 code rather than the best its CPU check finds. Its AVX-512
# code reads memory it never wrote once the stream ends (with B-frames and MB-tree, as at preset medium), so on an
# AVX-512 CPU the last frames' bits changed with what the allocator handed out (6 runs under MALLOC_PERTURB_ = 0 to
# 255 gave 4 different streams; its SSE2 code, which valgrind finds clean, gave one). Every x86-64 CPU has SSE2, and
# on 64x64 frames it is as fast. Other CPUs have no AVX-512 code in x264: its own choice stands there.
X264_PARAMS = "threads=1:lookahead-threads=1" + (":asm=SSE2" if platform.machine().lower() in ("x86_64", "amd64")
                                                 else "")


def jpeg_round_trip(frames: torch.Tensor, quality: int) -> tuple[torch.Tensor, int]:
    """uint8 frames (T, H, W, 3) through JPEG at ``quality``, one file per frame; the frames back and the bits:
    each frame's entropy-coded scan, and its headers (tables, the same for every frame) once."""
    decoded, bits = [], 0
    for i, frame in enumerate(frames.numpy()):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        data = buffer.getvalue()
        bits += 8 * (len(data) if i == 0 else len(data) - _jpeg_header_bytes(data))
        decoded.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return torch.from_numpy(np.stack(decoded)), bits


def _jpeg_header_bytes(data: bytes) -> int:
    """Bytes before a baseline JPEG's scan data: every marker segment up to and including start-of-scan."""
    start = data.index(b"\xff\xda")
    return start + 2 + int.from_bytes(data[start + 2:start + 4], "big")


def h264_round_trip(frames: torch.Tensor, crf: int, fps: float) -> tuple[torch.Tensor, int]:
    """uint8 frames (T, H, W, 3), H and W even, through libx264 (yuv420p) at ``crf``; the frames back and the bits.

    Everything runs on one thread (x264, its lookahead, the decoder, the colour conversions), with x264's own
    options (``X264_PARAMS``) making its bits the same in every run."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    encoder.time_base = 1 / Fraction(fps).limit_denominator(1001)
    encoder.options = {"crf": str(crf), "preset": "medium", "x264-params": X264_PARAMS}
    encoder.thread_count = 1
    packets = []
    for i, frame in enumerate(frames.numpy()):
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p", threads=1)
        picture.pts = i
        packets += encoder.encode(picture)
    packets += encoder.encode(None)
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1
    decoded = [f.to_ndarray(format="rgb24", threads=1) for p in [*packets, None] for f in decoder.decode(p)]
    return torch.from_numpy(np.stack(decoded)), 8 * sum(p.size for p in packets)


def codec_points(blocks: list[torch.Tensor], fps: float | None) -> dict[str, list[dict]]:
    """Per codec, one point per setting: its ``bits`` for all ``blocks`` (uint8 (fpb, H, W, 3) each) and
    every metric per block (``metrics``: name -> list)."""
    frames = torch.cat(blocks)
    fpb = blocks[0].shape[0]
    settings = {"H.264": [(crf, lambda f, q: h264_round_trip(f, q, fps or 24.0)) for crf in H264_CRFS],
                "JPEG": [(quality, jpeg_round_trip) for quality in JPEG_QUALITIES]}
    if frames.shape[1] % 2 or frames.shape[2] % 2:  # yuv420p needs even sizes
        del settings["H.264"]
    points: dict[str, list[dict]] = {}
    for codec, sweep in settings.items():
        points[codec] = []
        for setting, round_trip in sweep:
            decoded, bits = round_trip(frames, setting)
            scores = [block_scores(to_model(decoded[k * fpb:(k + 1) * fpb]), block) for k, block in enumerate(blocks)]
            points[codec].append({"setting": setting, "bits": bits,
                                  "metrics": {name: [s[name] for s in scores] for name in scores[0]}})
    return points


def bits_per_token(model) -> float:
    """Raw bits of one stored token: log2 of the codebook, or 32 per channel for continuous latents."""
    return math.log2(model.codebook_size) if model.codebook_size else 32.0 * model.config.latent_dim


def token_stream_bits(encodings: list[TokenizedVideo], bits_per_token: float) -> dict[str, float | None]:
    """Total bits of the token streams: ``raw``, ``entropy`` (order-0 empirical; None for continuous
    latents) and ``lzma`` (the indices, or the latents, as 32-bit numbers)."""
    tokens = torch.cat([e.tokens for e in encodings])
    raw = len(tokens) * bits_per_token
    if tokens.is_floating_point():
        packed, entropy = tokens.float().numpy().astype("<f4").tobytes(), None
    else:
        counts = torch.bincount(tokens.long()).double()
        counts = counts[counts > 0]
        entropy = float(-(counts * torch.log2(counts / counts.sum())).sum())
        packed = tokens.numpy().astype("<u4").tobytes()
    compressed = len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME))
    return {"raw": raw, "entropy": entropy, "lzma": 8.0 * compressed}
