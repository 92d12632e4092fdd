"""LLaMA-style transformer with 1-D RoPE and block-causal attention.

Shapes: B batch, N tokens, D width, H heads, K head dim. Every linear layer is bias-free,
as in the original release.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Cached keys and values of earlier tokens, one (k, v) pair per layer, each (B, H, N_past, K).
KVCache = list[tuple[Tensor, Tensor]]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)


def rope_angles(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, (N, K/2) in float32, for integer positions (N,)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def sincos_grid_embedding(grid: tuple[int, ...], dim: int, theta: float = 1e4) -> Tensor:
    """Fixed sinusoidal position features (prod(grid), dim) of the cells of a grid, e.g. (t, h, w),
    flattened in row-major order; each axis gets an even share of ``dim`` (the last takes the rest),
    values in [-1, 1] as in MAE and DiT."""
    shares = [dim // len(grid) // 2 * 2] * (len(grid) - 1)
    shares.append(dim - sum(shares))
    axes = []
    for size, share in zip(grid, shares):
        freqs = 1.0 / theta ** (torch.arange(share // 2, dtype=torch.float32) / max(share // 2, 1))
        angles = torch.arange(size, dtype=torch.float32)[:, None] * freqs  # (size, share/2)
        axes.append(torch.cat((angles.sin(), angles.cos()), dim=-1))
    cells = torch.meshgrid(*(torch.arange(size) for size in grid), indexing="ij")
    return torch.cat([axis[index.flatten()] for axis, index in zip(axes, cells)], dim=-1)  # (prod(grid), dim)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, H, N, K), in float32."""
    x32 = x.float()
    even, odd = x32[..., 0::2], x32[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def block_causal_mask(n_query_blocks: int, n_past_blocks: int, block_size: int, device: torch.device) -> Tensor | None:
    """Boolean (Nq, Nk) mask: query token i sees key j iff block(j) <= block(i).

    Queries are the last ``n_query_blocks`` blocks of a sequence whose first ``n_past_blocks``
    blocks are cached. Returns None when no key needs masking (a single new block).
    """
    if n_query_blocks == 1:
        return None
    q_block = torch.arange(n_query_blocks, device=device).repeat_interleave(block_size) + n_past_blocks
    k_block = torch.arange(n_past_blocks + n_query_blocks, device=device).repeat_interleave(block_size)
    return k_block[None, :] <= q_block[:, None]


@dataclass
class RingSpec:
    """Sequence parallelism: attend across the shards held by ``group``'s ranks."""

    block_size: int
    group: object  # a torch.distributed process group, or None for the default group


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.wq = nn.Linear(width, width, bias=False)
        self.wk = nn.Linear(width, width, bias=False)
        self.wv = nn.Linear(width, width, bias=False)
        self.wo = nn.Linear(width, width, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, past: tuple[Tensor, Tensor] | None,
        ring: "RingSpec | None" = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, n, d = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, -1).transpose(1, 2) for proj in (self.wq, self.wk, self.wv))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        if ring is not None:  # x is this rank's shard of a sequence split across ring.group
            from .ring_attention import ring_attention
            out = ring_attention(q, k, v, ring.block_size, ring.group)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, K)
        return self.wo(out.transpose(1, 2).reshape(b, n, d)), (k, v)


class SwiGLU(nn.Module):
    """The gated feed-forward layer; with ``grid`` (tokens per frame as (h, w)), a depthwise 3x3
    convolution over each frame's token grid mixes the gate with its neighbours' (LeanVAE's
    neighbourhood-aware feed-forward, arXiv 2503.14325). The input must then be whole frames."""

    def __init__(self, width: int, hidden: int, grid: tuple[int, int] | None = None):
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)
        self.grid = grid
        self.local = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False) if grid else None

    def forward(self, x: Tensor) -> Tensor:
        gate = self.w1(x)  # (B, N, hidden)
        if self.local is not None:
            gh, gw = self.grid
            frames = gate.reshape(-1, gh, gw, gate.shape[-1]).permute(0, 3, 1, 2)  # (B * N/(gh*gw), hidden, gh, gw)
            gate = gate + self.local(frames).permute(0, 2, 3, 1).reshape(gate.shape)
        return self.w2(F.silu(gate) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, width: int, num_heads: int, mlp_width: int, eps: float, grid: tuple[int, int] | None = None):
        super().__init__()
        self.attention_norm = RMSNorm(width, eps)
        self.attention = Attention(width, num_heads)
        self.ffn_norm = RMSNorm(width, eps)
        self.feed_forward = SwiGLU(width, mlp_width, grid)

    def forward(self, x, cos, sin, mask, past, ring=None):
        attended, present = self.attention(self.attention_norm(x), cos, sin, mask, past, ring)
        x = x + attended
        return x + self.feed_forward(self.ffn_norm(x)), present


class Transformer(nn.Module):
    """A stack of blocks and a final norm over a sequence of whole blocks of tokens.

    ``forward(x, past, start)`` takes new tokens x (B, N, D), N a multiple of ``block_size``, that
    follow the tokens whose keys and values are in ``past``; it returns the output and the
    cache extended with x, so blocks can be processed one at a time with nothing recomputed.
    ``start`` is x's first RoPE position: the cache length unless the caller has dropped old
    blocks from the cache (a sliding window), in which case positions keep counting.
    """

    def __init__(self, width: int, depth: int, num_heads: int, mlp_width: int, eps: float,
                 block_size: int, rope_theta: float, ffn_grid: tuple[int, int] | None = None):
        super().__init__()
        self.block_size = block_size
        self.rope_theta = rope_theta
        self.head_dim = width // num_heads
        self.blocks = nn.ModuleList(TransformerBlock(width, num_heads, mlp_width, eps, ffn_grid) for _ in range(depth))
        self.ln_f = RMSNorm(width, eps)

    def forward(self, x: Tensor, past: KVCache | None = None, start: int | None = None,
                sequence_group=None) -> tuple[Tensor, KVCache]:
        """With ``sequence_group``, x is this rank's contiguous shard of the sequence (sequence
        parallelism: ring attention, ``start`` = the shard's first global position, no cache)."""
        n_past = 0 if past is None else past[0][0].shape[2]
        start = n_past if start is None else start
        positions = torch.arange(start, start + x.shape[1], device=x.device)
        cos, sin = rope_angles(positions, self.head_dim, self.rope_theta)
        ring, mask = None, None
        if sequence_group is not None:
            ring = RingSpec(self.block_size, sequence_group)
        else:
            mask = block_causal_mask(x.shape[1] // self.block_size, n_past // self.block_size, self.block_size,
                                     x.device)
        present: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cos, sin, mask, None if past is None else past[i], ring)
            present.append(kv)
        return self.ln_f(x), present
