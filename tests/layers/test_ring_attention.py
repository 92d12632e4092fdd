"""Ring attention on 2 and 4 CPU processes (gloo) against single-process attention, with gradients."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from elastictok.layers.transformer import block_causal_mask

BATCH, HEADS, LENGTH, DIM, BLOCK = 2, 3, 24, 8, 5  # blocks of 5 tokens straddle every shard boundary



def reference():
    generator = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(BATCH, HEADS, LENGTH, DIM, generator=generator) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    n_blocks = -(-LENGTH // BLOCK)
    mask = block_causal_mask(n_blocks, 0, BLOCK, torch.device("cpu"))[:LENGTH, :LENGTH]
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.backward(grad)
    return (q, k, v, grad), out.detach(), (q.grad, k.grad, v.grad)


def worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from elastictok.layers.ring_attention import ring_attention
        (q, k, v, grad), out, grads = reference()
        shard = slice(rank * LENGTH // world, (rank + 1) * LENGTH // world)
        mine = [t.detach()[:, :, shard].clone().requires_grad_() for t in (q, k, v)]
        ring_out = ring_attention(*mine, block_size=BLOCK)
        ring_out.backward(grad[:, :, shard])
        errors = [(ring_out.detach() - out[:, :, shard]).abs().max().item()]
        errors += [(m.grad - g[:, :, shard]).abs().max().item() for m, g in zip(mine, grads)]
        results[rank] = errors
    finally:
        dist.destroy_process_group()


def spawn(target, world: int) -> dict:
    """Run target(rank, world, port, results) in `world` gloo processes on 127.0.0.1; their results by rank."""
    results = mp.Manager().dict()
    mp.spawn(target, args=(world, free_port(), results), nprocs=world, join=True)
    assert sorted(results.keys()) == list(range(world))
    return dict(results)


@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_matches_single_process(world):
    for rank, errors in spawn(worker, world).items():
        assert max(errors) < 1e-5, (rank, errors)


def model_worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from elastictok import ElasticTok, ElasticTokConfig
        torch.manual_seed(0)
        model = ElasticTok(ElasticTokConfig.from_preset("micro", bottleneck="vae", kl_weight=0.1)).eval()
        video = torch.rand(2, 6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        keep = torch.tensor([[3, 20, 32], [9, 2, 17]])
        whole = model(video, keep)
        whole.loss.backward()
        reference = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        shard = model.forward_sequence_shard(video, keep, group=None)
        shard.loss.backward()
        errors = []
        for name, param in model.named_parameters():
            grad = param.grad.clone()
            dist.all_reduce(grad)
            errors.append((grad / world - reference[name]).abs().max().item())
        losses = torch.tensor([shard.loss.item(), shard.kl.item()])
        dist.all_reduce(losses)
        results[rank] = (max(errors), (losses[0] / world - whole.loss).abs().item(),
                         (losses[1] / world - whole.kl).abs().item() / whole.kl.item())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_sequence_parallel_model_matches_one_process(world):
    """VAE (posterior mean): losses, KL and gradients averaged over ranks equal the whole sequence's."""
    for rank, errors in spawn(model_worker, world).items():
        grad_error, loss_error, kl_relative_error = errors
        assert grad_error < 1e-5 and loss_error < 1e-6 and kl_relative_error < 1e-5, (rank, errors)
