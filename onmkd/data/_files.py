"""Helpers shared by the readers: opening files, decoding lines, checking fields.

Every problem becomes a one-line :class:`~onmkd.errors.DataError` that names the file and
either the line (``path:LINENO: ...``) or the field (``path: data[3].qas[2]: ...``).

Line-based formats (JSON lines, TSV, CSV) are read one line at a time, and a line longer than
:data:`MAX_LINE_BYTES` is an error rather than a read that exhausts memory. Whole-file JSON
formats (SQuAD, DPR biencoder) are parsed at once, so their size is bounded by the memory only.
Strings read from JSON must be valid Unicode: a lone surrogate escape (``"\\ud800"``), which
JSON's syntax allows, is an error naming the field.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

from onmkd.errors import DataError
from onmkd.io import first_clause, parse_text

GZIP_MAGIC = b"\x1f\x8b"

# The longest line a line-based file may have, in bytes (after gzip decompression, line end
# included). Real lines are far shorter (DPR's psgs_w100.tsv: under 10 KB; BEIR corpora: under
# 1 MB), so a longer one means a file of another format or a corrupt one; the cap also bounds
# the memory a single line (or a gzip bomb without line ends) can take.
MAX_LINE_BYTES = 16 * 1024 * 1024

# Conventional splits first, anything else after them in name order.
_SPLIT_ORDER = {"train": 0, "dev": 1, "validation": 2, "test": 3}

_STEM_SUFFIXES = (".gz", ".zip", ".json", ".jsonl", ".jsonlines", ".csv", ".tsv", ".qa")


# --------------------------------------------------------------------------- paths


def require_file(path: Path) -> Path:
    """``path`` if it is a readable regular file, else a DataError naming it."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    return path


def require_dir(path: Path) -> Path:
    """``path`` if it is a folder, else a DataError naming it."""
    if not path.exists():
        raise DataError(f"{path}: no such folder")
    if not path.is_dir():
        raise DataError(f"{path}: is a file, expected a folder")
    return path


def file_stem(path: Path) -> str:
    """File name without data suffixes: ``nq-test.qa.csv`` -> ``nq-test``, ``x.jsonl.gz`` -> ``x``."""
    name = path.name
    while True:
        lower = name.lower()
        for suffix in _STEM_SUFFIXES:
            if lower.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        else:
            return name


def split_from_filename(path: Path) -> str:
    """Split named by a file: contains "train" -> train, "dev" -> dev, "test" -> test, else its stem."""
    lower = path.name.lower()
    for key in ("train", "dev", "test"):
        if key in lower:
            return key
    return file_stem(path)


def ordered_splits(names: list[str] | set[str]) -> list[str]:
    """Split names in display order: train, dev, validation, test, then the rest alphabetically."""
    return sorted(names, key=lambda n: (_SPLIT_ORDER.get(n, len(_SPLIT_ORDER)), n))


def stable_pid(title: str, text: str) -> str:
    """A short content hash for passages that come without an id."""
    return hashlib.sha1(f"{title}\x1f{text}".encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- reading


def _open_error(path: Path, exc: OSError) -> DataError:
    return DataError(f"{path}: cannot read ({exc.strerror or exc})")


def _is_gzip(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(2) == GZIP_MAGIC
    except OSError as exc:
        raise _open_error(path, exc) from None


def _not_utf8(where: str, raw: bytes, start: int) -> DataError:
    return DataError(f"{where}: not valid UTF-8 (byte {raw[start]:#04x})")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(lineno, text)`` for each line of a text file (gzip detected by its magic bytes).

    Line ends are stripped; a leading byte-order mark is dropped. Bytes that are not UTF-8,
    lines longer than :data:`MAX_LINE_BYTES` and corrupt or truncated gzip streams raise a
    DataError naming the file and line.
    """
    require_file(path)
    gz = _is_gzip(path)
    limit = MAX_LINE_BYTES
    try:
        f = gzip.open(path, "rb") if gz else path.open("rb")
    except OSError as exc:
        raise _open_error(path, exc) from None
    with f:
        lineno = 0
        while True:
            try:
                raw = f.readline(limit + 1)
            except (OSError, EOFError, zlib.error) as exc:
                what = "corrupt or truncated gzip data" if gz else "read error"
                raise DataError(f"{path}:{lineno + 1}: {what} ({exc})") from None
            if not raw:
                return
            lineno += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise DataError(
                    f"{path}:{lineno}: line longer than {limit:,} bytes (the limit, MAX_LINE_BYTES); "
                    "a corrupt file, or not in this format?"
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(f"{path}:{lineno}", raw, exc.start) from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield lineno, text.rstrip("\r\n")


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(lineno, value)`` for each non-blank line of a JSON-lines file (plain or gzip)."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        yield lineno, parse_text(json.loads, line, f"{path}:{lineno}", DataError)


def _zip_member(path: Path) -> tuple[str, bytes]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [
                n
                for n in zf.namelist()
                if n.lower().endswith(".json") and not n.endswith("/") and not n.startswith("__MACOSX/")
            ]
            if len(names) != 1:
                found = ", ".join(map(repr, names)) if names else "none"
                raise DataError(f"{path}: expected exactly one .json file in the zip archive (found: {found})")
            return names[0], zf.read(names[0])
    except DataError:
        raise
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a valid zip archive ({first_clause(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt archive raises many kinds (OSError, EOFError,
        # zlib.error, lzma.LZMAError, NotImplementedError for an unknown method, RuntimeError if encrypted, ...)
        raise DataError(f"{path}: cannot read the zip archive ({type(exc).__name__}: {first_clause(exc)})") from None


def read_json(path: Path) -> tuple[str, Any]:
    """Parse a whole JSON file (plain, gzip, or a .zip holding one .json).

    Returns ``(name, value)`` where ``name`` is what messages should call the file
    (``archive.zip!member.json`` for a zip member).
    """
    require_file(path)
    name = str(path)
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        member, data = _zip_member(path)
        name = f"{path}!{member}"
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _open_error(path, exc) from None
        if data[:2] == GZIP_MAGIC:
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _not_utf8(f"{name}:{line}", data, exc.start) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise DataError(f"{name}: empty file (expected JSON)")
    return name, parse_text(json.loads, text, name, DataError, line=True)


# --------------------------------------------------------------------------- fields

_MISSING: Any = object()


def json_type(value: Any) -> str:
    """How a JSON value's type reads in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_text(value: str, loc: str, key: str) -> str:
    """``value`` if it is valid Unicode, else a DataError: JSON escapes can spell lone surrogates
    (``"\\ud800"``), which no encoder, tokenizer or output file accepts."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"{loc}: field {key!r}: not valid Unicode (lone surrogate {value[exc.start]!r} at character {exc.start})"
            ) from None
    return value


def expect_object(value: Any, loc: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a DataError at ``loc``."""
    if not isinstance(value, dict):
        raise DataError(f"{loc}: expected a JSON object, got {json_type(value)}")
    return value


def _get(obj: dict[str, Any], key: str, loc: str, default: Any) -> Any:
    if key in obj:
        return obj[key]
    if default is _MISSING:
        raise DataError(f"{loc}: missing field {key!r}")
    return default


def get_str(obj: dict[str, Any], key: str, loc: str, default: Any = _MISSING, *, null_ok: bool = False) -> str:
    """A string field; ``default`` when absent (required if no default); null -> "" when ``null_ok``."""
    value = _get(obj, key, loc, default)
    if value is None and null_ok:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{loc}: field {key!r}: expected a string, got {json_type(value)}")
    return check_text(value, loc, key)


def get_list(obj: dict[str, Any], key: str, loc: str, default: Any = _MISSING) -> list[Any]:
    """A list field; ``default`` when absent (required if no default)."""
    value = _get(obj, key, loc, default)
    if not isinstance(value, list):
        raise DataError(f"{loc}: field {key!r}: expected a list, got {json_type(value)}")
    return value


def check_id(value: Any, loc: str, key: str) -> str:
    """An id given as a non-empty string or an integer, as a string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{loc}: field {key!r}: expected a string or integer id, got {json_type(value)}")
    text = check_text(str(value), loc, key)
    if not text.strip():
        raise DataError(f"{loc}: field {key!r}: empty id")
    return text


def get_id(obj: dict[str, Any], key: str, loc: str) -> str:
    """A required id field (string or integer), as a string."""
    return check_id(_get(obj, key, loc, _MISSING), loc, key)


def str_list(value: Any, loc: str, key: str) -> list[str]:
    """A list of strings (answers), de-duplicated in order."""
    if not isinstance(value, list):
        raise DataError(f"{loc}: field {key!r}: expected a list of strings, got {json_type(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(f"{loc}: field {key!r}[{i}]: expected a string, got {json_type(item)}")
        out.append(check_text(item, loc, f"{key}[{i}]"))
    return dedupe(out)


def dedupe(items: list[str]) -> list[str]:
    """``items`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(items))
