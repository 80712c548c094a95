"""Small file helpers shared by every module: the cache folder, atomic writes, safe file names,
checksums, and checkpoint folders built under a lock and renamed into place."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from onmkd.errors import ConfigError, ModelError


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



# --------------------------------------------------------------------------- parsing


def first_clause(exc: Exception) -> str:
    """The start of an exception's message, up to its first colon or line end."""
    text = str(exc).split(":", 1)[0].splitlines()
    return text[0] if text and text[0] else type(exc).__name__


def parse_text(parse: Callable[[str], Any], text: str, where: str, error: type[Exception], *,
               line: bool = False) -> Any:
    """``parse(text)`` (``json.loads`` or ``tomllib.loads``); a failure is one ``error`` naming ``where``:

    - JSON syntax: ``WHERE: invalid JSON (MESSAGE at column C)`` (``WHERE:LINE`` with ``line``);
    - TOML syntax: ``WHERE: MESSAGE`` (tomllib's message names line and column);
    - too deeply nested: ``WHERE: invalid JSON|TOML (nested too deeply)``;
    - a number beyond int's digit limit: ``WHERE: invalid JSON|TOML (its first clause)``.
    """
    fmt = "TOML" if parse is tomllib.loads else "JSON"
    try:
        return parse(text)
    except json.JSONDecodeError as e:
        at = f"{where}:{e.lineno}" if line else where
        raise error(f"{at}: invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{where}: {e}") from None
    except RecursionError:
        raise error(f"{where}: invalid {fmt} (nested too deeply)") from None
    except ValueError as e:  # a number beyond int's digit limit
        raise error(f"{where}: invalid {fmt} ({first_clause(e)})") from None

# --------------------------------------------------------------------------- checkpoint folders
# Folders built once (converted or extracted checkpoints): written under a temporary name beside
# their place, renamed into place at the end, their last file ``onmkd_checksums.json``.

CHECKSUMS_FILE = "onmkd_checksums.json"


def one_line(exc: BaseException | str) -> str:
    """An exception's message squeezed onto one line (errors reach users as one line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def checkpoint_dir(cache: Path | None, name: str) -> Path:
    root = Path(cache) if cache is not None else cache_dir()
    return root / "checkpoints" / name


def is_safe_relpath(name: str) -> bool:
    """True for a relative path with no ``..`` part, no drive and no leading slash (either kind)."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return False
    parts = name.replace("\\", "/").split("/")
    return ".." not in parts


def _listed_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` except the checksums file, as sorted POSIX paths."""
    names = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(folder).as_posix()
            if rel != CHECKSUMS_FILE:
                names.append(rel)
    return sorted(names)


def write_checksums(folder: str | os.PathLike[str], **extra: Any) -> Path:
    """Write ``onmkd_checksums.json`` in ``folder``: the sha256 of every other file, plus ``extra`` fields.

    Call it last, once every other file of the folder is written.
    """
    folder = Path(folder)
    files = {rel: file_sha256(folder / rel) for rel in _listed_files(folder)}
    if not files:
        raise ModelError(f"{folder}: no files to checksum")
    path = folder / CHECKSUMS_FILE
    write_json(path, {"format": 1, **extra, "files": files})
    return path


def _read_checksums(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / CHECKSUMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or not data["files"]:
        return None
    return data


def verify_checksums(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` has a checksums file and every file it lists exists with that sha256.

    A missing or malformed checksums file, a listed path that escapes the folder, a missing file
    or any mismatch gives False. Files the checksums file does not list are not checked.
    """
    folder = Path(folder)
    data = _read_checksums(folder)
    if data is None:
        return False
    for rel, expected in data["files"].items():
        if not isinstance(rel, str) or not isinstance(expected, str) or not is_safe_relpath(rel):
            return False
        path = folder / rel
        try:
            if not path.is_file() or file_sha256(path) != expected:
                return False
        except OSError:
            return False
    return True


@contextmanager
def dir_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``target`` so two processes don't build it at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, rely on atomic renames
        fcntl = None  # type: ignore[assignment]
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out_dir``; on success it replaces ``out_dir``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename folder ``src`` to ``dst``, moving an existing ``dst`` aside first and deleting it after."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.rmdir(old)
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except OSError:
        if old is not None and not dst.exists():
            os.replace(old, dst)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
