"""Process-level settings for CPU training speed."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_allocator() -> bool:
    """Keep freed memory in the process for reuse instead of returning it to the OS every step.

    glibc serves allocations above its mmap threshold (at most 32 MiB by default) with fresh
    pages and unmaps them on free; a training step of K peers allocates hundreds of such
    tensors, and re-faulting their pages each step cost about a third of the step time here.
    Raising the mmap and trim thresholds makes the heap reuse them (what jemalloc or tcmalloc,
    as PyTorch's CPU tuning guide suggests, do by design). Set ONMKD_NO_MALLOPT=1 to skip.
    Returns whether the setting was applied.
    """
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("ONMKD_NO_MALLOPT"):
        return _done
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, …): leave the allocator as it is
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 31))
    return _done


def resolve_device(name: str, field: str = "train.device"):
    """``auto``: the first CUDA device when one is present, else the CPU; ``field`` names the
    option in the error raised when a CUDA device is asked for and none is there."""
    import torch

    from onmkd.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{field}: {name!r} is not auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field}: {name!r} asked for, but torch sees no CUDA device")
    return dev
