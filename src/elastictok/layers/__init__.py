"""Shared neural building blocks: transformer, RoPE, block-causal masks, KV cache, bottlenecks, ring attention."""
