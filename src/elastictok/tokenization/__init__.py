"""Adaptive tokenization: targets, searches, the block coder, the tokenizer, token files, the length head."""
