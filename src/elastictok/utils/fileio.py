"""Small file helpers shared by everything that writes user-visible files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ElasticTokError


class atomic_path:
    """Context manager yielding a temporary path next to ``target``; renamed onto it on success.

    On failure (an exception inside, or a rename that fails, e.g. onto a folder) the temporary file
    and any folder created for it are removed: nothing is left behind.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)

    def __enter__(self) -> Path:
        parent = self.target.parent.absolute()
        self.created = []  # folders made here, deepest first
        while not parent.exists():
            self.created.append(parent)
            parent = parent.parent
        self.target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        except OSError:
            self._remove_created()
            raise
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
                os.replace(self.tmp, self.target)
                return
            except OSError:
                self.tmp.unlink(missing_ok=True)
                self._remove_created()
                raise
        self.tmp.unlink(missing_ok=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # not empty: something else was written there
                break


def check_output_dir(out_dir: str | os.PathLike) -> None:
    """An output folder must exist or be creatable below a writable folder (nothing is created here)."""
    out_dir = Path(out_dir)
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ElasticTokError(f"-o {out_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise ElasticTokError(f"-o {out_dir}: {existing} is not writable")


def check_output_file(output: str | os.PathLike) -> None:
    """An output file must be writable where it is named (nothing is created here)."""
    output = Path(output)
    if output.is_dir():
        raise ElasticTokError(f"-o {output}: is a directory; name a file such as {output / 'out.png'}")
    check_output_dir(output.parent)
