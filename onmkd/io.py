"""Small file helpers shared by every module: the cache folder, atomic writes and safe file names."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from onmkd.errors import ConfigError


def cache_dir() -> Path:
    """Where converted checkpoints and encoded corpora live: ``$ONMKD_CACHE`` or ``~/.cache/onmkd``."""
    root = os.environ.get("ONMKD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "onmkd")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):  # mkstemp makes it 0600; give it the mode a plain open() would
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------------------------------
# Path safety: names from user input (data set specs, model names, splits, config fields, names
# read from data files) become file names only through these helpers.

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, default: str = "x") -> str:
    """``text`` as one harmless file-name component.

    Runs of characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_`` (so no
    separator, drive letter or NUL survives); a result that is empty, ``.`` or ``..`` becomes
    ``default``.
    """
    name = _UNSAFE_CHARS.sub("_", str(text)).strip("_")
    return default if name in ("", ".", "..") else name


def check_component(part: str, what: str = "name") -> str:
    """Return ``part`` if it is a single plain path component, else raise :class:`ConfigError`.

    Refused: empty, ``.``, ``..``, a path separator (``/`` or ``\\``), a drive (``C:``) or a NUL.
    ``what`` names the field in the message.
    """
    text = str(part)
    if (text in ("", ".", "..") or "/" in text or "\\" in text or "\0" in text
            or re.match(r"^[A-Za-z]:", text)):
        raise ConfigError(f"{what}: {text!r} cannot be used as a file or folder name "
                          "(no path separators, '..' or absolute paths)")
    return text


def safe_join(root: str | os.PathLike[str], *parts: str, what: str = "path") -> Path:
    """``root / parts…``, refusing (:class:`ConfigError`) any result that would leave ``root``.

    Each part may hold several relative components (``a/b``), but none may be ``..``, absolute
    or a drive; the joined path is also checked lexically to lie under ``root``. Symbolic links
    inside ``root`` are the user's own and are not followed.
    """
    base = Path(root)
    out = base
    for part in parts:
        text = str(part)
        pieces = text.replace("\\", "/").split("/")
        if (not text or text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text) or "\0" in text
                or any(p == ".." for p in pieces)):
            raise ConfigError(f"{what}: {text!r} would write outside {base} (no '..' or absolute paths)")
        out = out.joinpath(*(p for p in pieces if p not in ("", ".")))
    root_abs = os.path.normpath(os.path.abspath(base))
    out_abs = os.path.normpath(os.path.abspath(out))
    if os.path.commonpath([root_abs, out_abs]) != root_abs:  # pragma: no cover - caught above
        raise ConfigError(f"{what}: {out} lies outside {base}")
    return out


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (the checksum of every cached artifact)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
