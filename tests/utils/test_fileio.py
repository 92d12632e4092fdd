"""Outputs appear whole or not at all, whatever stops the write."""

from __future__ import annotations

import os
import signal

import pytest

from elastictok.errors import ElasticTokError
from elastictok.utils import fileio
from elastictok.utils.fileio import atomic_path


def test_ctrl_c_while_a_finished_file_is_renamed_into_place_leaves_no_temporary(tmp_path, monkeypatch):
    chmod = os.chmod

    def chmod_then_ctrl_c(path, mode):
        chmod(path, mode)
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, landing between publish's two steps

    monkeypatch.setattr(fileio.os, "chmod", chmod_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new" / "out.bin") as tmp:
            tmp.write_bytes(b"all of it")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # no temporary, and not the folder made for it


def test_a_failed_write_names_the_target_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(ElasticTokError, match="out.bin: cannot write \\(disk full\\)"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError("disk full")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
