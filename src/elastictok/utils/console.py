"""What a person at a terminal sees: counts with the right noun form, and progress bars that show on a
terminal only (in a log or a pipe a bar is a flood of carriage returns)."""

from __future__ import annotations

from tqdm import tqdm


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``counted(1, "block")`` -> "1 block", ``counted(3, "block")`` -> "3 blocks"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def progress_bar(*args, show: bool = True, **kwargs) -> tqdm:
    """A tqdm bar, drawn when ``show`` and stderr is a terminal; otherwise silent (``bar.write`` still prints)."""
    return tqdm(*args, disable=None if show else True, **kwargs)
