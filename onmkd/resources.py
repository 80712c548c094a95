"""Checks before large allocations and writes: fail early with a message that names the alternative.

- :func:`available_memory` reads ``MemAvailable`` (Linux) or falls back to physical pages; a
  container's cgroup limit is honoured when it is lower.
- :func:`check_memory` raises :class:`ResourceError` when ``need`` bytes would not fit in
  ``fraction`` of the available memory.
- :func:`check_disk` raises when the file system holding ``path`` has less than ``need`` bytes
  (plus a small margin) free.

``ONMKD_SKIP_RESOURCE_CHECKS=1`` turns both checks off (for users who know better, e.g. swap).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from onmkd.errors import OnmkdError

_MARGIN = 64 * 2**20  # keep 64 MiB free on disk after a write


class ResourceError(OnmkdError):
    """An allocation or write would not fit; the message says how much and what to do instead."""


def _skip() -> bool:
    return os.environ.get("ONMKD_SKIP_RESOURCE_CHECKS", "") not in ("", "0")


def human(nbytes: float) -> str:
    """Bytes as a short human reading: ``1.5 GiB``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def available_memory() -> int:
    """Bytes of memory this process can still allocate without swapping (best estimate)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
            return 2**62
    limit = _cgroup_limit()
    return min(avail, limit) if limit is not None else avail


def check_memory(need: int, what: str, alternative: str, *, fraction: float = 0.9) -> None:
    """Raise :class:`ResourceError` if ``need`` bytes for ``what`` exceed ``fraction`` of free memory."""
    if _skip():
        return
    have = available_memory()
    if need > fraction * have:
        raise ResourceError(
            f"{what} needs about {human(need)} of memory but only {human(have)} is available; {alternative} "
            "(or set ONMKD_SKIP_RESOURCE_CHECKS=1 to try anyway)"
        )


def check_disk(path: str | os.PathLike[str], need: int, what: str) -> None:
    """Raise :class:`ResourceError` if the file system of ``path`` lacks ``need`` bytes for ``what``."""
    if _skip():
        return
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if need + _MARGIN > free:
        raise ResourceError(
            f"{what} needs about {human(need)} on disk at {path} but only {human(free)} is free; "
            "free some space or point the output (or ONMKD_CACHE) elsewhere"
        )
