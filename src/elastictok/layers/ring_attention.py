"""Block-causal ring attention: sequence parallelism across processes, forward and backward.

The sequence is split into contiguous shards, one per rank of a process group. Each rank keeps
its queries and passes its keys and values around the ring with point-to-point sends; partial
results are merged with log-sum-exp. Token i may attend to token j iff block(j) <= block(i),
block(t) = t // block_size over global positions, so blocks may straddle shard boundaries.
PyTorch's built-in context parallelism has no block-causal mask, hence this module.

Shapes: q, k, v (B, H, L, K) per rank, L = this rank's share of the sequence.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


def _ring_pass(tensors: list[Tensor], group) -> list[Tensor]:
    """Send to the next rank, receive from the previous one."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    send_to = dist.get_global_rank(group, (rank + 1) % size) if group is not None else (rank + 1) % size
    recv_from = dist.get_global_rank(group, (rank - 1) % size) if group is not None else (rank - 1) % size
    tensors = [t.contiguous() for t in tensors]
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t, send_to, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, r, recv_from, group) for r in received]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


def _visible(q_start: int, k_start: int, q_len: int, k_len: int, block_size: int, device) -> Tensor:
    q_block = (torch.arange(q_len, device=device) + q_start) // block_size
    k_block = (torch.arange(k_len, device=device) + k_start) // block_size
    return k_block[None, :] <= q_block[:, None]  # (Lq, Lk)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, block_size: int, group) -> Tensor:
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        length = q.shape[2]
        scale = 1.0 / math.sqrt(q.shape[-1])
        q32 = q.float()
        out = torch.zeros_like(q32)
        lse = torch.full(q.shape[:3], -math.inf, device=q.device)
        kv = (k, v)
        for step in range(size):
            source = (rank - step) % size  # whose keys and values we hold now
            if step + 1 < size:
                incoming = _ring_pass(list(kv), group)
            visible = _visible(rank * length, source * length, length, length, block_size, q.device)
            if visible.any():
                scores = torch.einsum("bhqd,bhkd->bhqk", q32, kv[0].float()) * scale
                scores = scores.masked_fill(~visible, -math.inf)
                part_lse = torch.logsumexp(scores, dim=-1)  # (B, H, L), -inf where a row sees nothing here
                part_out = torch.einsum("bhqk,bhkd->bhqd", torch.exp(scores - part_lse[..., None]).nan_to_num(0.0),
                                        kv[1].float())
                new_lse = torch.logaddexp(lse, part_lse)
                out = (out * torch.exp(lse - new_lse)[..., None].nan_to_num(0.0)
                       + part_out * torch.exp(part_lse - new_lse)[..., None].nan_to_num(0.0))
                lse = new_lse
            if step + 1 < size:
                kv = tuple(incoming)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.block_size, ctx.group = block_size, group
        return out.type_as(q)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        group, block_size = ctx.group, ctx.block_size
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        length = q.shape[2]
        scale = 1.0 / math.sqrt(q.shape[-1])
        q32, do = q.float(), grad_out.float()
        delta = (do * out).sum(-1, keepdim=True)  # (B, H, L, 1)
        dq = torch.zeros_like(q32)
        # Keys, values and their gradient accumulators travel together and end up back home.
        k_cur, v_cur = k.float(), v.float()
        dk, dv = torch.zeros_like(k_cur), torch.zeros_like(v_cur)
        for step in range(size):
            source = (rank - step) % size
            visible = _visible(rank * length, source * length, length, length, block_size, q.device)
            if visible.any():
                scores = torch.einsum("bhqd,bhkd->bhqk", q32, k_cur) * scale
                probs = torch.exp(scores - lse[..., None]).masked_fill(~visible, 0.0).nan_to_num(0.0)
                dv = dv + torch.einsum("bhqk,bhqd->bhkd", probs, do)
                dprobs = torch.einsum("bhqd,bhkd->bhqk", do, v_cur)
                dscores = probs * (dprobs - delta)
                dq = dq + torch.einsum("bhqk,bhkd->bhqd", dscores, k_cur) * scale
                dk = dk + torch.einsum("bhqk,bhqd->bhkd", dscores, q32) * scale
            k_cur, v_cur, dk, dv = _ring_pass([k_cur, v_cur, dk, dv], group)
        # After `size` passes every chunk (and its gradients) is back on its owner.
        return dq.type_as(q), dk.type_as(k), dv.type_as(v), None, None


def ring_attention(q: Tensor, k: Tensor, v: Tensor, block_size: int, group=None) -> Tensor:
    """Block-causal attention over a sequence sharded contiguously across ``group``'s ranks."""
    return _RingAttention.apply(q, k, v, block_size, group)
