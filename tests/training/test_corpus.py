"""tokenize-corpus: shards that WebDataset reads, one member name per input."""

from __future__ import annotations

import json
import tarfile

from PIL import Image

from elastictok.tokenization.targets import TokenCount
from elastictok.training.corpus import tokenize_corpus


def test_inputs_whose_keys_collide_get_a_member_name_each(micro, tmp_path):
    """clip.png beside clip.jpg, a.b.png beside a_b.png, x/y.png beside x__y.png: once written under one key
    each (exit 0), WebDataset refused the shard and extraction kept one of each pair."""
    import webdataset as wds

    media = tmp_path / "media"
    (media / "x").mkdir(parents=True)
    names = ["clip.png", "clip.jpg", "a.b.png", "a_b.png", "x/y.png", "x__y.png"]
    for shade, name in enumerate(names):
        Image.new("RGB", (32, 32), (40 * shade, 90, 200)).save(media / name)
    summary = tokenize_corpus(micro, [media], tmp_path / "dst", TokenCount(micro.config.min_tokens), progress=False)
    assert (summary.inputs, summary.failed) == (6, 0)
    [shard] = (tmp_path / "dst").glob("*.tar")
    members = [m.name for m in tarfile.open(shard)]
    assert len(members) == len(set(members)) == 12
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    assert all({"etok", "json"} <= sample.keys() for sample in samples)
    assert sorted(json.loads(sample["json"])["source"] for sample in samples) == sorted(str(media / n) for n in names)
