"""LPIPS perceptual loss (Zhang et al. 2018, VGG variant) from user-supplied weights.

No weights are bundled or downloaded. The file (safetensors, or a weights-only torch file) holds
torchvision's VGG16 ``features.{i}.weight/bias`` tensors and LPIPS' linear heads
``lin{k}.model.1.weight`` (k = 0..4), as in the ``lpips`` package's vgg.pth. See docs/training.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ElasticTokError

# VGG16 conv widths; "M" is a 2x2 max-pool. LPIPS taps the ReLU after the last conv of each stage.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = {3, 8, 15, 22, 29}  # indices in torchvision's `features` of the ReLUs LPIPS reads
_CHANNELS = [64, 128, 256, 512, 512]


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for spec in _VGG16:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, spec, 3, padding=1), nn.ReLU()]
                in_ch = spec
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "LPIPS":
        path = Path(path)
        if not path.is_file():
            raise ElasticTokError(f"{path}: LPIPS weights not found")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ElasticTokError(f"{path}: not a readable weights file ({str(exc).splitlines()[0][:120]})") from None
        state = {k.replace(".model.1.", ".").replace("lin", "lins."): v
                 for k, v in state.items()}
        model = cls()
        missing = set(model.state_dict()) - set(state)
        if missing:
            raise ElasticTokError(f"{path}: missing LPIPS tensors, e.g. {sorted(missing)[:3]}")
        model.load_state_dict({k: state[k] for k in model.state_dict()})
        return model.eval()

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x)
                if len(out) == len(_TAPS):
                    break
        return out

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        """Mean LPIPS distance between image batches (N, 3, H, W) in [-1, 1]."""
        a, b = self._taps((recon - self.shift) / self.scale), self._taps((target - self.shift) / self.scale)
        total = recon.new_zeros(())
        for lin, fa, fb in zip(self.lins, a, b):
            diff = (F.normalize(fa, dim=1, eps=1e-10) - F.normalize(fb, dim=1, eps=1e-10)).pow(2)
            total = total + lin(diff).mean()
        return total
