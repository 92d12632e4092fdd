"""The codec anchors are the same numbers in every process: two processes coding the same frames agree to the
last digit, however their memory starts out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# The bundled street clip at the default model's blocks (20 blocks of 4 frames, 64x64): every codec setting's
# bits and per-block scores, as JSON.
MEASURE = """
import json
from elastictok.evaluation.anchors import codec_points
from elastictok.media.blocks import iter_media_blocks
from elastictok.models.pretrained import sample_video
info, blocks = iter_media_blocks(sample_video(), (64, 64), 4)
print(json.dumps(codec_points(list(blocks), info.fps)))
"""


def test_two_processes_give_the_same_codec_points():
    """glibc fills each allocation with a different byte under each MALLOC_PERTURB_, as two runs may find their
    memory: x264's AVX-512 code read such bytes at the end of a stream, and these two processes used to disagree
    on the last frames' H.264 bits (and so on their PSNR)."""
    runs = [subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_PERTURB_": perturb})
            for perturb in ("0", "165")]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    first, second = (json.loads(run.stdout) for run in runs)
    assert set(first) == {"H.264", "JPEG"} and len(first["H.264"]) == 6
    assert len(first["H.264"][0]["metrics"]["psnr"]) == 20  # one score per block
    assert [p["bits"] for p in first["H.264"]] == [p["bits"] for p in second["H.264"]]
    assert first == second
