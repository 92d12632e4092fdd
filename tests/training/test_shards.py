"""WebDataset shards: building, deterministic and resumable streaming, rank splits, bad samples."""

from __future__ import annotations

import io
import itertools
import tarfile

import pytest
import torch

from elastictok import ElasticTokError
from elastictok.training.shards import ShardBatches, build_shards, decode_sample, iter_shard, list_shards


@pytest.fixture(scope="module")
def shard_dir(photo_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    summary = build_shards([photo_folder], out, shard_size=2, clip_frames=8, short_side=64, progress=False)
    assert (summary.clips, summary.images, summary.skipped) == (3, 3, 0)  # 24 frames -> 3 clips of 8
    return out


def test_shards_added_to_a_folder_keep_the_ones_there(photo_folder, tmp_path):
    build_shards([photo_folder / "photo0.jpg"], tmp_path, progress=False)
    before = (tmp_path / "shard-000000.tar").read_bytes()
    summary = build_shards([photo_folder], tmp_path, shard_size=2, clip_frames=8, short_side=64, progress=False)
    assert (tmp_path / "shard-000000.tar").read_bytes() == before
    assert [p.name for p in list_shards([tmp_path])] == [f"shard-{i:06d}.tar" for i in range(1 + summary.shards)]


def batches(shards, n, **kwargs):
    fields = dict(resolution=(32, 32), frames_per_block=2, n_blocks=2, batch_size=2, image_fraction=0.5, seed=1,
                  buffer_size=3)
    fields.update(kwargs)
    return [video for video, _ in itertools.islice(iter(ShardBatches(shards, **fields)), n)]


def test_shards_are_whole_tars_in_webdataset_layout(shard_dir):
    shards = list_shards([shard_dir])
    assert len(shards) == 3 and not list(shard_dir.glob("*.tmp"))
    names = [m.name for s in shards for m in tarfile.open(s)]
    assert {n.rpartition(".")[2] for n in names} == {"mp4", "jpg", "json"}
    kinds = [kind for s in shards for _, kind, _ in iter_shard(s)]
    assert sorted(kinds) == ["image"] * 3 + ["video"] * 3
    video = next(decode_sample(k, p) for s in shards for _, k, p in iter_shard(s) if k == "video")
    assert video.shape == (8, 64, 64, 3)


def test_streaming_is_deterministic_and_resumable(shard_dir):
    shards = list_shards([shard_dir])
    first = batches(shards, 8)
    assert all(b.shape in {(2, 4, 3, 32, 32), (4, 2, 3, 32, 32)} and b.abs().max() <= 1 for b in first)
    assert {b.shape for b in first} == {(2, 4, 3, 32, 32), (4, 2, 3, 32, 32)}  # both kinds occur
    again = batches(shards, 8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    resumed = batches(shards, 3, start_batch=5)
    assert all(torch.equal(a, b) for a, b in zip(first[5:], resumed))


def test_dataloader_workers_resume_the_global_order(shard_dir):
    shards = list_shards([shard_dir])
    fields = dict(resolution=(32, 32), frames_per_block=2, n_blocks=1, batch_size=2, image_fraction=0.5, seed=1,
                  buffer_size=2)
    loader = lambda start: torch.utils.data.DataLoader(  # noqa: E731
        ShardBatches(shards, start_batch=start, **fields), batch_size=None, num_workers=2)
    full = [video for video, _ in itertools.islice(iter(loader(0)), 7)]
    resumed = [video for video, _ in itertools.islice(iter(loader(3)), 4)]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed))


def test_ranks_read_disjoint_shards(shard_dir):
    shards = list_shards([shard_dir])
    seen = []
    for rank in range(3):
        dataset = ShardBatches(shards, (32, 32), 2, 1, 1, 0.5, seed=0, rank=rank, world_size=3, buffer_size=1)
        stream = dataset._stream(rank, 3)
        seen.append({payload for _, payload in itertools.islice(stream, 2)})
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_bad_samples_are_skipped(shard_dir, tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, payload in (("a.jpg", b"not a jpeg"), ("b.mp4", b"not an mp4")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    dataset = ShardBatches([bad] + list_shards([shard_dir]), (32, 32), 2, 1, 2, 0.5, seed=0, buffer_size=1)
    out = list(itertools.islice(iter(dataset), 6))
    assert len(out) == 6 and dataset.skipped >= 1 and out[-1][1] == dataset.skipped
    with pytest.raises(ElasticTokError):
        decode_sample("video", b"garbage")
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(list_shards([shard_dir])[0].read_bytes()[:700])
    assert len(list(iter_shard(truncated))) <= 1  # stops with a warning, no exception


def test_training_from_shards_counts_bad_samples(shard_dir, tmp_path):
    from elastictok.training.config import TrainConfig
    from elastictok.training.loop import train
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard in list_shards([shard_dir]):
        (folder / shard.name).write_bytes(shard.read_bytes())
    with tarfile.open(folder / "shard-bad.tar", "w") as tar:
        for name in ("x.jpg", "y.jpg", "z.mp4"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"junk"))
    cfg = TrainConfig(model="micro", data=[str(folder)], out_dir=str(tmp_path / "run"), steps=12, batch_size=2,
                      n_blocks=1, warmup_steps=1, eval_every=10**9, checkpoint_every=6, progress=False, num_workers=2)
    run = train(cfg)
    assert (run / "model" / "model.safetensors").exists()
    assert int((run / "log.csv").read_text().splitlines()[-1].split(",")[-1]) >= 1


def test_shard_command(photo_folder, tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "elastictok.cli", "data", "shard", str(photo_folder),
                             str(tmp_path / "s"), "--shard-size", "4", "--clip-frames", "12", "--no-progress"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "2 shards" in result.stdout and "2 video clips, 3 images" in result.stdout


def _mpeg_ts(path, size: tuple[int, int], frames: int) -> bytes:
    """An MPEG transport stream of ``frames`` grey frames of ``size`` (W, H); such streams concatenate."""
    import av

    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=10)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for i in range(frames):
            image = torch.full((size[1], size[0], 3), 40 * (i % 5), dtype=torch.uint8).numpy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path.read_bytes()


def test_odd_inputs_are_shards_or_named_skips(tmp_path):
    """A video that changes size mid-stream, one too short for a clip, an image JPEG cannot hold, two
    files with one stem: each becomes whole samples with keys of their own, or one warning and a skip."""
    from PIL import Image

    media = tmp_path / "media"
    (media / "a").mkdir(parents=True)
    (media / "b").mkdir()
    (media / "resized.mpg").write_bytes(_mpeg_ts(tmp_path / "1.ts", (64, 64), 12)
                                        + _mpeg_ts(tmp_path / "2.ts", (96, 48), 12))
    _mpeg_ts(media / "short.mpg", (64, 64), 1)
    Image.new("RGB", (65535, 2)).save(media / "wide.png")
    for folder in ("a", "b"):
        Image.new("RGB", (16, 16), "red").save(media / folder / "same.png")
    Image.new("RGB", (16, 16), "blue").save(media / "resized-00000.png")  # the key of resized.mpg's first clip
    summary = build_shards([media], tmp_path / "out", clip_frames=8, short_side=64, progress=False)
    assert (summary.images, summary.skipped) == (3, 2)  # short.mpg and wide.png skipped
    samples = list(itertools.chain.from_iterable(iter_shard(s) for s in list_shards([tmp_path / "out"])))
    keys = [key for key, _, _ in samples]
    assert len(keys) == len(set(keys)) == summary.images + summary.clips
    sizes = {tuple(decode_sample(kind, payload).shape[1:3]) for _, kind, payload in samples if kind == "video"}
    assert sizes == {(64, 64), (48, 96)}  # a clip never mixes the two sizes


def test_an_interrupted_run_leaves_no_shard(photo_folder, tmp_path, monkeypatch):
    import elastictok.training.shards as shards

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = shards._write_image
    monkeypatch.setattr(shards, "_write_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_shards([photo_folder], tmp_path / "out", shard_size=1, progress=False)
    assert not (tmp_path / "out").exists()  # the first image's finished shard went too: a rerun starts clean


def test_mixed_shards_serve_either_kind_far_into_a_run(shard_dir):
    """Half images, half clips: batch 3000 reads whichever kind it needs (counting the samples seen over the
    whole run once refused a batch that began on the other kind, after 200 times the batch)."""
    shards = list_shards([shard_dir])
    for fraction in (0.33, 0.2):
        [video] = batches(shards, 1, batch_size=1, n_blocks=1, image_fraction=fraction, start_batch=3000)
        assert video.shape[0] == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_an_error_in_a_loader_worker_is_its_one_line(photo_folder, tmp_path, workers):
    """Shards without a video clip at image_fraction 0.5: the same one line with DataLoader workers as without
    (a worker's error once arrived wrapped in its whole traceback)."""
    from elastictok.training.shards import raise_worker_errors

    build_shards([photo_folder / "photo0.jpg", photo_folder / "photo1.jpg"], tmp_path, progress=False)
    dataset = ShardBatches(list_shards([tmp_path]), (32, 32), 2, 1, 1, 0.5, seed=0, buffer_size=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    with pytest.raises(ElasticTokError) as info:
        for _ in raise_worker_errors(iter(loader)):
            pass
    assert str(info.value) == "shards hold no video samples; set image_fraction accordingly"


def test_a_video_the_encoder_refuses_is_skipped_and_the_others_kept(photo_folder, tmp_path):
    """A 20000x16 video (H.264 cannot hold it) is one skipped input; DST keeps the other inputs' samples."""
    import av

    wide = tmp_path / "wide.mkv"
    with av.open(str(wide), "w") as container:
        stream = container.add_stream("ffv1", rate=8)
        stream.width, stream.height, stream.pix_fmt = 20000, 16, "yuv420p"
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(torch.full((16, 20000, 3), 90, dtype=torch.uint8).numpy(), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    summary = build_shards([wide, photo_folder / "photo0.jpg"], tmp_path / "out", clip_frames=4, progress=False)
    assert (summary.images, summary.clips, summary.skipped) == (1, 0, 1)
    assert [kind for s in list_shards([tmp_path / "out"]) for _, kind, _ in iter_shard(s)] == ["image"]
