"""The package root: instant to import, the whole public API on first use, and model.tokenize after a deep import.

Each check runs in a fresh interpreter: this one has long loaded everything."""

from __future__ import annotations

import subprocess
import sys


def python(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_import_is_instant_and_the_api_loads_on_first_use():
    out = python("import sys, elastictok\n"
                 "print('torch' in sys.modules, 'ElasticTok' in dir(elastictok))\n"
                 "from elastictok import *\n"
                 "print('torch' in sys.modules, all(getattr(elastictok, n) is not None for n in elastictok.__all__))\n"
                 "print(elastictok.models.registry.from_pretrained is elastictok.from_pretrained)")
    assert out.splitlines() == ["False True", "True True", "True"]


def test_a_deep_import_still_tokenizes():
    out = python("import torch\n"
                 "from elastictok.models.elastictok.model import ElasticTok\n"
                 "from elastictok.models.elastictok.config import ElasticTokConfig\n"
                 "model = ElasticTok(ElasticTokConfig.from_preset('micro'))\n"
                 "encoded = model.tokenize(torch.zeros(1, 4, 3, 32, 32), 'tokens:4')\n"
                 "print(encoded[0].counts.tolist())")
    assert out.startswith("[4")
