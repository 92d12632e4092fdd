"""Sizes in an edited config.json or length head are checked against limits before anything is allocated."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from hostile import one_line

from elastictok import ElasticTokError, from_pretrained
from elastictok.models.flextok.config import FlexTokConfig
from elastictok.tokenization.length_head import LengthHead, count_grid


@pytest.fixture
def saved_micro(micro, tmp_path):
    micro.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def edit_config(directory, **fields) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize("fields", [
    {"mlp_width": 10**30}, {"head_channels": 2**62}, {"frames_per_block": 2**63}, {"encoder_depth": 10**6},
    {"fsq_levels": [2**40] * 6}, {"patch_size": [1, 2**40, 8]}, {"bottleneck": "vae", "vae_latent_dim": 2**40},
    {"resolution": [8192, 8192], "patch_size": [1, 1, 1]}, {"width": -3}, {"num_heads": 2.5},
], ids=lambda fields: ",".join(fields))
def test_a_size_beyond_its_limit_is_refused_in_one_line(saved_micro, fields):
    edit_config(saved_micro, **fields)
    with pytest.raises(ElasticTokError, match="invalid ElasticTokConfig") as caught:
        from_pretrained(saved_micro)
    assert one_line(str(caught.value))


@pytest.mark.parametrize("fields", [{"width": 2**40}, {"registers": 10**9}, {"resolution": [2**20, 64]},
                                    {"steps": 2**70}, {"num_heads": 0}, {"guidance": 10**30}])
def test_flextok_sizes_have_the_same_limits(fields):
    with pytest.raises(ElasticTokError, match="invalid FlexTokConfig"):
        FlexTokConfig.from_preset("flextok-micro", **fields)


def test_a_config_wider_than_its_weights_is_refused_before_building_it(saved_micro, tmp_path):
    """width 16384 would allocate gigabytes for a model the weights cannot fill; the weights' header is read
    first. The loads run in a process whose address space is capped at 6 GiB, so an allocation shows as an
    error other than ours. A length head that says it has a million members is refused the same way."""
    edit_config(saved_micro, width=16384, num_heads=2)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
        from elastictok import ElasticTokError, from_pretrained
        try:
            from_pretrained({str(saved_micro)!r})
        except ElasticTokError as exc:
            print("refused:", exc)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused:" in run.stdout and "does not match its config" in run.stdout


def test_a_length_head_that_overstates_its_size_is_refused_before_building_it(micro, tmp_path):
    from safetensors.torch import load_file, save_file

    c = micro.config
    head = LengthHead(c.width, count_grid(c.min_tokens, c.tokens_per_block).tolist(), c.fingerprint(),
                      micro.weights_digest(), hidden=16, members=2)
    head.save(tmp_path / "head.safetensors")
    assert len(LengthHead.load(tmp_path / "head.safetensors", micro).members) == 2
    from safetensors import safe_open
    with safe_open(str(tmp_path / "head.safetensors"), "pt") as f:
        meta = f.metadata()
    for field, value, why in (("members", "1000000", "1000000 members"), ("hidden", "4096", "wrong shape"),
                              ("members", "3", "missing"), ("width", "33", "another model")):
        save_file(load_file(tmp_path / "head.safetensors"), tmp_path / "edited.safetensors",
                  metadata={**meta, field: value})
        with pytest.raises(ElasticTokError, match=why):
            LengthHead.load(tmp_path / "edited.safetensors", micro)


def test_from_pretrained_still_loads_both_families(saved_micro, micro, tmp_path):
    from elastictok.models.flextok.model import FlexTok

    loaded = from_pretrained(saved_micro)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), micro.state_dict().values()))
    flex = FlexTok(FlexTokConfig.from_preset("flextok-micro")).eval()
    flex.save_pretrained(tmp_path / "flex")
    again = from_pretrained(tmp_path / "flex")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), flex.state_dict().values()))
