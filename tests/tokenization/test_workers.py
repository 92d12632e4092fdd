"""Worker pools: threads per worker never oversubscribe the cores; a bad file does not stop the others."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from elastictok import ElasticTok, ElasticTokConfig, ElasticTokError
from elastictok.tokenization.targets import TokenCount
from elastictok.tokenization.workers import TokenizerPool, threads_per_worker


def test_threads_per_worker_never_exceeds_the_cores():
    for cores in (1, 2, 3, 8, 16):
        for workers in range(1, 20):
            threads = threads_per_worker(workers, cores)
            assert threads >= 1 and (workers * threads <= cores or threads == 1)
    with pytest.raises(ElasticTokError):
        threads_per_worker(0, 4)


@pytest.mark.parametrize("workers", [1, 2])
def test_pool_tokenizes_in_order_and_reports_bad_files(tmp_path, workers):
    torch.manual_seed(0)
    model_dir = tmp_path / "micro"
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(model_dir)
    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 20, 200)).save(tmp_path / f"img{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    files = [tmp_path / "img0.png", tmp_path / "bad.png", tmp_path / "img1.png", tmp_path / "img2.png"]
    threads = torch.get_num_threads()
    with TokenizerPool(model_dir, workers, cores=2, target=TokenCount(4)) as pool:
        assert pool.threads == 2 // workers
        results = list(pool.map(files))
    assert torch.get_num_threads() == threads  # an in-process pool restores the caller's threads
    assert isinstance(results[1], ElasticTokError) and "bad.png" in str(results[1])
    assert [r.info.source for r in results if not isinstance(r, Exception)] == [str(files[i]) for i in (0, 2, 3)]
