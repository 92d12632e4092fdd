"""Tokenizing one input for several targets together, scoring each block as it is decided, gives to the last
digit the numbers of tokenizing for each target alone and decoding the tokens again; a mask-free encoder
runs once per block for all the targets."""

from __future__ import annotations

import pytest
import torch

from elastictok import ElasticTok, ElasticTokConfig
from elastictok.models.flextok import FlexTok, FlexTokConfig
from elastictok.tokenization.options import TokenizeOptions
from elastictok.tokenization.scoring import decode_and_score, tokenize_and_score
from elastictok.tokenization.targets import Threshold, TokenCount
from elastictok.tokenization.tokenizer import read_source, tokenize_blocks

MODELS = {
    "elastictok-mask-free": lambda: ElasticTok(ElasticTokConfig.from_preset("micro", encoder_mask_conditioning=False)),
    "elastictok-mask-conditioned": lambda: ElasticTok(ElasticTokConfig.from_preset("micro")),
    "flextok": lambda: FlexTok(FlexTokConfig.from_preset("flextok-micro", steps=2, guidance=1.0)),
}


def perturbed(name: str):
    """A micro model with perturbed random weights (FlexTok's adaLN-zero would otherwise ignore the tokens)."""
    torch.manual_seed(0)
    model = MODELS[name]()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def pan_blocks(model, photo_folder) -> tuple:
    info, blocks = read_source(model, photo_folder / "pan.mp4")
    return info, list(blocks)


def half_met_psnr(model, info, blocks) -> Threshold:
    """A PSNR that about half of the blocks meet at a middle count."""
    c = model.config
    middle = tokenize_blocks(model, info, blocks, TokenCount((c.min_tokens + c.tokens_per_block) // 2))
    return Threshold("psnr", float(torch.tensor(decode_and_score(model, middle, blocks).metrics["psnr"]).median()))


@pytest.mark.parametrize("search", ["binary", "full"])
@pytest.mark.parametrize("name", MODELS)
def test_scored_as_tokenized_is_scored_as_decoded(name, search, photo_folder):
    model = perturbed(name)
    c, options = model.config, TokenizeOptions(search=search)
    info, blocks = pan_blocks(model, photo_folder)
    targets = [TokenCount(c.min_tokens), TokenCount(c.tokens_per_block), half_met_psnr(model, info, blocks)]
    together = tokenize_and_score(model, info, blocks, targets, options)
    assert together[2][0].evaluations > len(blocks)  # the threshold's counts were searched for
    for target, (encoded, measured) in zip(targets, together):
        alone = tokenize_blocks(model, info, blocks, target, options)
        assert torch.equal(encoded.counts, alone.counts) and torch.equal(encoded.tokens, alone.tokens)
        assert torch.equal(encoded.scores, alone.scores)
        assert measured.metrics == decode_and_score(model, alone, blocks, options).metrics  # every metric, every digit


def test_a_mask_free_encoder_runs_once_per_block_for_every_target(photo_folder):
    model = perturbed("elastictok-mask-free")
    info, blocks = pan_blocks(model, photo_folder)
    targets = [TokenCount(n) for n in (4, 8, 16)] + [half_met_psnr(model, info, blocks)]
    passes: list[int] = []
    model.encoder.register_forward_hook(lambda *_: passes.append(1))
    together = tokenize_and_score(model, info, blocks, targets)
    assert len(passes) == len(blocks)
    for target, (encoded, _) in zip(targets, together):  # as though each had encoded for itself
        assert encoded.encoder_passes == len(blocks)
        assert torch.equal(encoded.tokens, tokenize_blocks(model, info, blocks, target).tokens)
