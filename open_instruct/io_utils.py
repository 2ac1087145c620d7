"""Atomic writes (a reader or a resumed run never sees a half-written file or folder), and a jsonl reader.

Every output of the harness (metrics.json, predictions, adapters, checkpoints, processed data) goes through
these helpers: write into a temporary sibling, flush + fsync, then `os.replace` onto the final name.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary file next to `path`; on a clean exit it replaces `path`, on an error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if "b" in mode:
        encoding = None
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines atomically; returns the number of rows written."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on a clean exit it becomes `path` (an old `path` is replaced).

    Used for checkpoints and saved models: a folder that exists under its final name is always complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        normal_permissions(tmp)
        if path.exists():
            replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def normal_permissions(tree: str | os.PathLike) -> None:
    """Give a folder tree the permissions of ordinary new files under the umask (mkdtemp makes 0700, safetensors
    0600), as every other tool's outputs have."""
    mask = _umask()
    for root, _dirs, files in os.walk(tree):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the OS or filesystem cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put folder `new` in the place of the existing folder `path` and delete the old one.

    The swap is one atomic step where the OS allows it (a reader sees the old folder or the new one, never
    neither); elsewhere it is two renames, with the old folder kept as ``.<name>.old`` in between.
    """
    new, path = Path(new), Path(path)
    if _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old folder
        return
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def iter_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError) -> Iterator[tuple[str, Any]]:
    """Yield ``("path:line", object)`` for each non-blank line of a jsonl file (gzip-compressed if it ends in
    ``.gz``); bad JSON raises ``error`` naming the line, an unreadable or truncated ``.gz`` names the file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        yield from _iter_jsonl_lines(path, opener, error)
    except (OSError, EOFError) as e:  # not gzip, truncated, unreadable
        raise error(f"{path}: cannot read ({e})") from None


def _iter_jsonl_lines(path, opener, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
