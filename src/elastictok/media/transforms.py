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


def to_model(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


def from_model(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu()
