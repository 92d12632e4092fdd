"""Training: the loop, checkpoints, masks, datasets, shards, distributed set-up, corpus tokenization."""
