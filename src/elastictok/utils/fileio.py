"""Small file helpers shared by everything that writes user-visible files."""

from __future__ import annotations

import itertools
import os
import stat
import tempfile
from pathlib import Path

from ..errors import ElasticTokError


class atomic_path:
    """Context manager yielding a temporary path next to ``target``; renamed onto it on success.

    On failure (an exception inside, or a rename that fails, e.g. onto a folder) the temporary file
    and any folder created for it are removed: nothing is left behind. A file-system error becomes
    one ElasticTokError line naming the target.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)

    def __enter__(self) -> Path:
        try:
            mode = self.target.stat().st_mode
        except OSError:  # not there yet (or unreadable: the rename below says so)
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):  # a rename would replace a device or pipe with a plain file
            kind = "a directory" if stat.S_ISDIR(mode) else "a pipe or device"
            raise ElasticTokError(f"{self.target}: is {kind}; name a file to write")
        self.created = missing_folders(self.target.parent)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # the name is cut (in bytes) so that any name the file system takes also takes its temporary's
            stem = os.fsdecode(os.fsencode(self.target.name)[:64])  # names need not be UTF-8
            fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=self.target.parent)
        except OSError as exc:
            remove_empty_folders(self.created)
            raise self._error(exc) from None
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                publish(self.tmp, self.target)
                return
            except BaseException as error:  # a refused rename, or Ctrl-C landing in it: no temporary left
                self.tmp.unlink(missing_ok=True)
                remove_empty_folders(self.created)
                if isinstance(error, OSError):
                    raise self._error(error) from None
                raise
        self.tmp.unlink(missing_ok=True)
        remove_empty_folders(self.created)
        if isinstance(exc, OSError) and self._names_ours(exc):  # the write itself failed (disk full ...):
            raise self._error(exc) from None  # name the target; other files' errors pass unchanged

    def _names_ours(self, exc: OSError) -> bool:
        return exc.filename is None or Path(os.fsdecode(exc.filename)).absolute() == self.tmp.absolute()

    def _error(self, exc: OSError) -> ElasticTokError:
        return ElasticTokError(f"{self.target}: cannot write ({exc.strerror or exc})")


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what making it will create."""
    folder = Path(folder).absolute()
    return list(itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)))


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, as made for an output), stopping at the first that is not empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): something else was written there
            break


def publish(tmp: Path, target: Path) -> None:
    """Rename a finished temporary file (made by ``mkstemp``, mode 0600) onto ``target``, with the permissions
    a plain new file gets."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


def check_output_dir(out_dir: str | os.PathLike) -> None:
    """An output folder must exist or be creatable below a writable folder (nothing is created here)."""
    out_dir = Path(out_dir)
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ElasticTokError(f"-o {out_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):  # what making an entry in it takes
        raise ElasticTokError(f"-o {out_dir}: {existing} is not writable")


def check_output_file(output: str | os.PathLike, *sources: str | os.PathLike, example: str = "out.png") -> None:
    """An output file must be writable where it is named, and not be one of the ``sources`` it is made
    from (nothing is created here); a folder is refused with ``example`` as the file to name in it."""
    output = Path(output)
    if output.is_dir():
        raise ElasticTokError(f"-o {output}: is a directory; name a file such as {output / example}")
    check_output_dir(output.parent)
    if output.exists() and any(Path(s).exists() and output.samefile(s) for s in sources):
        raise ElasticTokError(f"-o {output}: is an input; name another output")


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it names a regular file; a folder, pipe or device (which could hang a read or
    never end) is refused in one line naming ``what`` was expected, e.g. "a token file"."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ElasticTokError(f"{path}: no such file") from None
    except OSError as exc:
        raise ElasticTokError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError:  # the system cannot take the name
        raise ElasticTokError(f"{str(path)!r}: not a file name (it holds a NUL character)") from None
    if stat.S_ISDIR(mode):
        raise ElasticTokError(f"{path}: is a directory, not {what}")
    if not stat.S_ISREG(mode):
        raise ElasticTokError(f"{path}: is a pipe or device, not {what}")
    return path


MAX_SMALL_FILE_BYTES = 1 << 20


def read_small_file(path: str | os.PathLike, what: str, limit: int = MAX_SMALL_FILE_BYTES,
                    pipes: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (a config), refused in one line otherwise: a
    device such as /dev/zero would never end. With ``pipes``, a pipe is read too (a shell's ``<(sed ...)``);
    one that no process writes reads as empty instead of blocking forever."""
    path = Path(path)
    try:
        is_pipe = pipes and stat.S_ISFIFO(path.stat().st_mode)
    except OSError:
        is_pipe = False
    if not is_pipe:
        check_input_file(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a pipe without a writer would block
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as file:
            raw = file.read(limit + 1)
    except OSError as exc:
        raise ElasticTokError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if len(raw) > limit:
        raise ElasticTokError(f"{path}: larger than {limit} bytes, not {what}")
    if is_pipe and not raw.strip():
        raise ElasticTokError(f"{path}: an empty pipe (nothing writes to it), not {what}")
    return raw
