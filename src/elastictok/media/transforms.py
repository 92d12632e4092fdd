"""Geometry and value range: resizing and fitting uint8 frames (T, H, W, 3), and the model's [-1, 1] floats."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_short_side(frames: torch.Tensor, short: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> the same with min(H, W) == short, antialiased."""
    t, h, w, _ = frames.shape
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    if size == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=scale < 1, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def fit_to_resolution(frames: torch.Tensor, resolution: tuple[int, int], mode: str = "crop") -> torch.Tensor:
    """Resize (T, H, W, 3) uint8 so it covers (crop) or fits inside (pad) ``resolution``, then centre it."""
    th, tw = resolution
    t, h, w, _ = frames.shape
    scale = max(th / h, tw / w) if mode == "crop" else min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "crop":
        nh, nw = max(nh, th), max(nw, tw)
    if (nh, nw) != (h, w):
        x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(nh, nw), mode="bilinear",
                          antialias=scale < 1, align_corners=False)
        frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if mode == "crop":
        top, left = (nh - th) // 2, (nw - tw) // 2
        return frames[:, top:top + th, left:left + tw]
    out = torch.zeros((t, th, tw, 3), dtype=torch.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[:, top:top + nh, left:left + nw] = frames
    return out


def unfit(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """The inverse of ``fit_to_resolution``: float frames (T, 3, h, w) in [-1, 1] back to the source's
    ``size`` (H, W). ``pad``: the padding is dropped and the picture resized back, whole. ``crop``: the
    picture is resized back into its place in the source frame; the edges the crop left out are black."""
    (h, w), (th, tw) = size, x.shape[-2:]
    scale = max(th / h, tw / w) if mode == "crop" else min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "pad":
        top, left = (th - nh) // 2, (tw - nw) // 2
        return _resize(x[..., top:top + nh, left:left + nw], (h, w))
    nh, nw = max(nh, th), max(nw, tw)
    top, left = round((nh - th) // 2 / scale), round((nw - tw) // 2 / scale)
    region = (min(h - top, round(th / scale)), min(w - left, round(tw / scale)))
    out = torch.full((*x.shape[:-2], h, w), -1.0, dtype=x.dtype, device=x.device)
    out[..., top:top + region[0], left:left + region[1]] = _resize(x, region)
    return out


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float frames (..., 3, h, w) to ``size``, antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    flat = x.reshape(-1, *x.shape[-3:]).float()  # (N, 3, h, w)
    out = F.interpolate(flat, size=size, mode="bilinear", antialias=shrinking, align_corners=False)
    return out.reshape(*x.shape[:-2], *size).to(x.dtype)


def to_model(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


def from_model(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu()


DISPLAY_SIDE = 256  # frames smaller than this are shown enlarged by a whole factor to about this size


def display_scale(resolution: tuple[int, int]) -> int:
    """The whole factor that shows frames of ``resolution`` at about ``DISPLAY_SIDE`` pixels."""
    return max(1, -(-DISPLAY_SIDE // min(resolution)))


def upscale(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) enlarged ``scale`` times by repeating pixels (nearest neighbour)."""
    return frames.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
