"""Library misuse: the public API handed arguments of the wrong kind refuses them in one ElasticTokError line
(never a TypeError from pathlib or torch, never a silent rounding), listed and then fuzzed."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hostile import TRIED, fuzz, refused_or

from elastictok import Budget, ElasticTok, ElasticTokConfig, ElasticTokError, Threshold, TokenCount
from elastictok import TokenizeOptions, parse_target


@functools.cache
def micro() -> ElasticTok:
    torch.manual_seed(0)
    return ElasticTok(ElasticTokConfig.from_preset("micro")).eval()


def generator():
    yield torch.zeros(2, 3, 32, 32)


MISUSED_INPUTS = [None, 5, 2.5, b"clip.mp4", "clip\x00.mp4", {}, {"video": "clip.mp4"}, set(), generator(), [None],
                  [5, "x.mp4"],
                  torch.zeros(1, 2, 3, 32, 32, device="meta"), np.zeros((2, 32, 32, 3), np.float32),
                  torch.zeros(1, 2, 3, 32, 32, dtype=torch.complex64), torch.zeros(1, 2, 3, 32, 32, dtype=torch.bool)]


@pytest.mark.parametrize("inputs", MISUSED_INPUTS, ids=lambda x: type(x).__name__)
def test_tokenize_refuses_inputs_it_cannot_read(inputs):
    with pytest.raises(ElasticTokError):
        micro().tokenize(inputs, "tokens:8")


@pytest.mark.parametrize("options", [{"window": 1.5}, {"window": True}, {"window": "all"}, {"candidates": 2.5},
                                     {"candidates": "4"}, {"search": "fastest"}, {"fit": None}])
def test_tokenize_options_of_the_wrong_kind_are_refused(options):
    with pytest.raises(ElasticTokError):
        micro().tokenize(torch.zeros(1, 2, 3, 32, 32), "tokens:8", **options)


@pytest.mark.parametrize("call", [
    lambda: parse_target(None), lambda: parse_target(5), lambda: parse_target(b"psnr:30"), lambda: TokenCount("5"),
    lambda: TokenCount(64.7), lambda: TokenCount(64.0), lambda: TokenCount(True), lambda: Budget(100.5),
    lambda: Budget("100"), lambda: Budget(0), lambda: Threshold("psnr", "30"), lambda: Threshold(None, 30),
], ids=["parse None", "parse int", "parse bytes", "count text", "count 64.7", "count 64.0", "count True",
        "budget 100.5", "budget text", "budget 0", "threshold text", "threshold None"])
def test_targets_refuse_what_they_would_otherwise_round_or_crash_on(call):
    with pytest.raises(ElasticTokError):
        call()


def test_whole_numbers_of_any_integer_type_are_counts():
    assert TokenCount(np.int64(8)).tokens == 8 and type(TokenCount(np.int64(8)).tokens) is int
    assert parse_target("tokens:8") == TokenCount(8) and parse_target("budget:500") == Budget(500)


# anything a caller might pass by mistake
anything = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12) | st.binary(max_size=8)
    | st.sampled_from([float("nan"), torch.zeros(()), torch.zeros(3), np.zeros(3), object(), range(3), Ellipsis]),
    lambda children: st.lists(children, max_size=3) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=4), children, max_size=2), max_leaves=6)


@fuzz(150)
@given(anything)
def test_targets_and_options_of_any_value_are_made_or_refused(value):
    TRIED["library misuse"] += 1
    for make in (parse_target, TokenCount, Budget, lambda v: Threshold("psnr", v), lambda v: Threshold(v, 30),
                 lambda v: TokenizeOptions(window=v), lambda v: TokenizeOptions(candidates=v)):
        refused_or(make, value)


@fuzz(60)
@given(anything, st.sampled_from(["tokens:8", "psnr:20", "budget:40"]))
def test_tokenize_of_any_value_gives_tokens_or_is_refused(value, target):
    TRIED["library misuse"] += 1
    refused_or(micro().tokenize, value, target)
