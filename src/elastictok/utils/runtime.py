"""Where this process runs: its rank in a torch.distributed group (if any), its device, its interrupts."""

from __future__ import annotations

import contextlib
import logging
import platform
import signal
import threading

import torch

from ..errors import ElasticTokError


log = logging.getLogger(__name__)


def native_bf16(device_type: str) -> bool:
    """Whether bf16 autocast is fast on this device: a CUDA GPU with bf16 units, or an x86 CPU with
    AVX512-BF16 or AMX. Elsewhere on x86 (e.g. AVX2 only) torch emulates it, several times slower than
    float32. Other CPUs (ARM) and devices have no probe here: the user's choice is trusted."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu" and platform.machine().lower() in ("x86_64", "amd64"):
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return True


def warn_if_slow_bf16(device_type: str) -> None:
    """One log line when bf16 is asked for where it is emulated (measured here: 6x slower than fp32)."""
    if not native_bf16(device_type):
        log.warning("bf16 was asked for, but this %s has no native bf16 (AVX512-BF16 or AMX): it runs several "
                    "times slower than fp32 here; use fp32 (--dtype fp32, or bf16: false in a training config)",
                    device_type.upper())


INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def interrupts_held():
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them. Torch's C code turns an interrupt
    that lands inside it (e.g. while safetensors builds tensors) into an unrelated ValueError; held, it
    arrives as itself. Processes started meanwhile inherit the hold (see ``release_interrupts``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    # Two holds: handlers that only note the signal (the kernel may hand a process-wide signal to any
    # thread, e.g. tqdm's monitor, whatever this thread's mask says), and a blocked mask, which is
    # what child processes inherit.
    previous, arrived = _set_handlers({signum: lambda signum, _: held.append(signum) for signum in INTERRUPTS})
    if arrived is not None:  # an interrupt from before the block: deliver it now, hold nothing
        _set_handlers(previous)
        raise arrived
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS) if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if previous_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # a pending one lands in ``held``
        _, arrived = _set_handlers(previous)
        if arrived is not None:
            raise arrived
        if held:
            signal.raise_signal(held[0])  # once, to the handler the block started with


def _set_handlers(handlers: dict) -> tuple[dict, BaseException | None]:
    """Install every handler, even when a pending signal's handler raises while one is swapped (Python runs
    pending handlers first); returns the handlers replaced and the first such exception, for the caller to raise."""
    previous, arrived = {}, None
    for signum, handler in handlers.items():
        for _ in range(3):  # each pending signal's handler runs once; more tries only for a hammered Ctrl-C
            try:
                old = signal.signal(signum, handler)
            except BaseException as exc:  # noqa: BLE001 (an interrupt's handler raised: keep it, finish the swap)
                arrived = arrived or exc
                continue
            previous[signum] = signal.SIG_DFL if old is None else old  # None: a handler set from C
            break
        else:
            raise arrived
    return previous, arrived


def blocked_signals() -> set | None:
    """The signals this thread blocks (None where that cannot be read), to hand to a child process that
    starts under ``interrupts_held``, which restores them with ``release_interrupts``."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, []) if hasattr(signal, "pthread_sigmask") else None


def release_interrupts(blocked: set | None) -> None:
    """In a process started under ``interrupts_held``: deliver the held interrupts, and later ones; the signals
    its parent blocked before (``blocked_signals``) stay blocked."""
    if blocked is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def distributed_ready() -> bool:
    """True inside an initialised torch.distributed process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside one."""
    if distributed_ready():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    return next(module.parameters(), torch.empty(0)).device


def resolve_device(name: str | None) -> str:
    """The device to run on: ``name`` when this machine has it (default: cuda if available), else one line."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ElasticTokError(f"--device {name!r}: not a device name (cpu, cuda, cuda:1, mps ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ElasticTokError(f"--device {name}: this torch build or machine has no CUDA device; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ElasticTokError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ElasticTokError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ElasticTokError(f"--device {name}: unsupported device type {device.type!r}")
    return str(device)
