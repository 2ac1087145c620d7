"""The error convention of every command-line tool in this repository.

Expected failures — a bad flag value, a missing, unreadable, undecodable or corrupt file, a wrong base model, an
unwritable or occupied output folder — end the program with exit status 2 and exactly one line on stderr::

    error: --learning_rate must be > 0, got -1.0

The line names the offending value, file and (for data) line. A traceback is printed only for a genuine bug.

* Code raises :class:`UsageError` (or a subclass: ``DataValidationError``, ``GridConfigError``, ``EvalError``)
  with a message that names what is wrong.
* :func:`run` wraps a ``main(argv)`` in ``if __name__ == "__main__"``; besides ``UsageError`` it converts the
  well-known library failures that reach it (``OSError`` and its subclasses with their file name,
  ``UnicodeDecodeError``, ``json.JSONDecodeError``, safetensors' ``SafetensorError``, the hub's "not a repo id")
  into the same one line, and returns ``main``'s integer result as the exit status.
* :class:`ArgumentParser` is argparse's parser whose errors use the same one line (argparse already exits 2).

This module imports only the standard library, so ``--help`` and parse errors stay fast; callers import torch,
transformers and peft after their arguments have been checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn

EXIT_USAGE = 2  # as argparse: bad input, nothing was done

# bitsandbytes logs this warning at import on CPUs with AVX512-BF16 when the optional `kernels` package cannot
# fetch its CPU kernel from the hub (always, offline). The built-in fallback kernel is used; the line is noise.
_QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


class UsageError(Exception):
    """An expected failure caused by the user's input; its message (one line) names the value or file."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the repository's one-line error format (``error: ...``, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def quiet_library_noise() -> None:
    """Silence known, harmless start-up warnings of libraries (call before they are imported)."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def error_message(err: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for anything that should show a traceback."""
    if isinstance(err, UsageError):
        return " ".join(str(err).split("\n")).strip()
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})"
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    if isinstance(err, OSError):
        if err.filename is not None and err.strerror:
            target = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
            return f"{target}: {err.strerror}"
        return _first_line(err) or type(err).__name__
    name = type(err).__name__
    if name == "SafetensorError":
        return f"corrupt safetensors file ({_first_line(err)})"
    if name == "HFValidationError":  # huggingface_hub: a path that is neither a folder nor a repo id
        return f"not a local folder nor a hub repo id ({_first_line(err)})"
    return None


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> NoReturn:
    """Run ``main(argv)`` as a program: exit status 2 and one ``error:`` line for expected failures."""
    quiet_library_noise()
    try:
        result = main(argv)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - only expected failures are converted; the rest re-raise
        message = error_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


# ------------------------------------------------------------------------------------------------ checks

def check_readable_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` is an existing regular file this process can read."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, expected a file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{flag} {path}: permission denied")
    return p


def looks_local(name: str) -> bool:
    """True when ``name`` can only mean a local path (it exists, or it is not of the hub's ``owner/name`` form)."""
    if Path(name).exists():
        return True
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    return False


def check_model_source(name: str, flag: str, need: str = "config.json") -> Path | None:
    """A model/tokenizer given as a local folder exists and holds ``need``; returns the folder (None: hub name).

    Offline (``HF_HUB_OFFLINE=1``) a hub name must already be in the local cache.
    """
    if looks_local(name):
        folder = Path(name).expanduser()
        if not folder.exists():
            raise UsageError(f"{flag} {name}: no such folder")
        if not folder.is_dir():
            raise UsageError(f"{flag} {name}: is a file, expected a model folder")
        if need and not (folder / need).is_file():
            raise UsageError(f"{flag} {name}: no {need} in that folder")
        return folder
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if need and not isinstance(try_to_load_from_cache(name, need), str):
            raise UsageError(f"{flag} {name}: no such local folder, and not in the hub cache (HF_HUB_OFFLINE=1)")
    return None


def read_json_file(path: str | os.PathLike, what: str | None = None) -> dict:
    """A JSON object from ``path``; a missing, undecodable or malformed file raises one line naming it."""
    p = Path(path)
    label = what or str(p)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{label}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{label}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{label}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{label}: expected a JSON object, got {type(obj).__name__}")
    return obj


def check_safetensors(path: str | os.PathLike) -> None:
    """A safetensors file whose header is readable and whose size matches it (no tensor is loaded)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError for any corruption
        raise UsageError(f"{path}: corrupt safetensors file ({_first_line(e)})") from None


def check_writable_dir(path: str | os.PathLike, flag: str) -> None:
    """``path`` (or the first existing folder above it) accepts new files: a probe file is created and removed."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")
    probe_dir = p
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UsageError(f"{flag} {path}: {probe_dir} is not a folder")
    probe = probe_dir / f".write_probe.{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write in {probe_dir} ({e.strerror})") from None
    finally:
        probe.unlink(missing_ok=True)


def check_output_dir(output: str | os.PathLike, flag: str, sources: dict[str, str | os.PathLike],
                     overwrite: bool) -> Path:
    """Refuse an output folder that would destroy or mix with existing files.

    ``sources`` maps a flag to an input folder (e.g. the adapter folder) that must survive: the output may not
    be it, contain it or lie inside it. Without ``overwrite`` the output must not exist or be an empty folder;
    with it an existing output *folder* is replaced as a whole (a regular file is never replaced).
    """
    out = Path(output).expanduser().resolve()
    for source_flag, source in sources.items():
        src = Path(source).expanduser().resolve()
        if out == src or src.is_relative_to(out) or out.is_relative_to(src):
            raise UsageError(f"{flag} {output}: is, contains or lies inside {source_flag} {source}; "
                             "choose a folder outside it")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{flag} {output}: exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise UsageError(f"{flag} {output}: folder is not empty; pass --overwrite to replace it")
    check_writable_dir(out.parent if not out.exists() else out, flag)
    if out.exists():
        check_writable_dir(out.parent, flag)  # the replacement is renamed in next to it
    return out
