"""Every output transferkit writes goes through here: what it may replace, and how it writes.

Three rules, the same for every command (stores, saved models, run folders, reports, the demo
folder, ``--write-images`` and the feature cache):

* **Never an input.** An output path that is, contains or lies inside one of the job's inputs
  (real paths compared, symbolic links resolved) is a :class:`~transferkit.errors.UsageError`
  before anything is written: :func:`check_outside_inputs`.
* **Replace only what transferkit made.** An existing path is replaced only when it is a store
  with transferkit's schema, a model file :func:`transferkit.models.save_model` wrote, or a folder
  holding the :data:`MARKER` file transferkit writes into the folders it creates
  (:func:`mark_folder`, :func:`check_folder`). Anything else is a ``UsageError`` that names the
  path and deletes nothing. The old path is moved aside while the new one is made and deleted
  only once the new one stands (:func:`replacing`); if making it fails, the old one is put back.
* **Nothing half-written, one line on failure.** Files are written to a hidden temporary name
  beside the target and renamed over it (:func:`atomic_path`); the temporary file is removed on
  any error. A missing parent folder is created; an operating-system error on an output (a
  read-only file system, a full disk, no permission) becomes an :class:`OutputError` whose one-line
  message names the path and the reason (:func:`writing`).

Floor 1: no TensorFlow, no NumPy.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import TransferkitError, UsageError

MARKER = ".transferkit"
"""The file transferkit writes into a folder it creates (a fine-tuning run, a spot-check report,
the demo, written images); its JSON says which ``kind`` of folder it is."""

_HINTS = {
    _errno.ENOSPC: "free some space and run again",
    _errno.EDQUOT: "free some space and run again",
    _errno.EROFS: "choose an output on a writable file system",
    _errno.EACCES: "choose an output you may write, or change its permissions",
    _errno.EPERM: "choose an output you may write, or change its permissions",
}


class OutputError(TransferkitError):
    """An output could not be written (exit code 1); the message names the path and the reason."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def os_error_details(exc: BaseException) -> tuple[int | None, str] | None:
    """``(errno, reason)`` of an operating-system error, or None for any other exception.

    Besides :class:`OSError`, this reads the errors HDF5 reports through h5py as ``RuntimeError``
    or ``OSError`` with the C library's ``errno = N, error message = '...'`` in their text."""
    if isinstance(exc, OutputError):
        return exc.errno, str(exc)
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return exc.errno, exc.strerror
    text = str(exc)
    number = re.search(r"errno = (\d+)", text)
    message = re.search(r"error message = '([^']*)'", text)
    if number or message:
        code = int(number.group(1)) if number else None
        return code, message.group(1) if message else os.strerror(code or 0)
    if isinstance(exc, OSError):
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return exc.errno, first
    return None


def output_error(path: Any, exc: BaseException, action: str = "write") -> OutputError:
    """The one-line :class:`OutputError` for ``exc`` raised while doing ``action`` to ``path``."""
    details = os_error_details(exc)
    code, reason = details if details else (None, f"{type(exc).__name__}: {exc}")
    reason = " ".join(str(reason).split())
    hint = _HINTS.get(code or -1)
    return OutputError(
        f"cannot {action} {os.fspath(path)}: {reason}" + (f"; {hint}" if hint else ""), code
    )


@contextlib.contextmanager
def writing(path: Any, action: str = "write") -> Iterator[None]:
    """Turn an operating-system error raised in the body into an :class:`OutputError`."""
    try:
        yield
    except OutputError:
        raise
    except (OSError, RuntimeError) as exc:
        if os_error_details(exc) is None:
            raise
        raise output_error(path, exc, action) from exc


def ensure_parent(path: Any) -> Path:
    """Create the folder ``path`` goes in (and its parents); returns it."""
    parent = Path(os.path.abspath(os.fspath(path))).parent
    ensure_folder(parent)
    return parent


def ensure_folder(folder: Any) -> Path:
    """Create ``folder`` and its parents if missing; an error is an :class:`OutputError`."""
    folder = Path(folder)
    with writing(folder, "create the folder"):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_writable(path: Any) -> None:
    """Fail early, before any work, when ``path`` cannot be written: its parent folder is created
    if missing and a file is made and removed there (a read-only file system or a folder without
    permission is an :class:`OutputError` now rather than after the job's work)."""
    parent = ensure_parent(path)
    probe = parent / f".transferkit-probe-{os.getpid()}"
    with writing(path):
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        os.unlink(probe)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _temporary_name(path: Path, tag: str) -> Path:
    """A hidden sibling of ``path`` that keeps its suffixes (Keras and Matplotlib read them)."""
    name = path.name
    stem = name.split(".", 1)[0] if not name.startswith(".") else name
    suffixes = name[len(stem) :] if stem != name else ""
    return path.with_name(f".{stem}.{tag}-{os.getpid()}{suffixes}")


@contextlib.contextmanager
def atomic_path(path: Any) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is synced and renamed over
    ``path``, on any error removed. The parent folder is created if missing."""
    path = Path(path)
    ensure_parent(path)
    tmp = _temporary_name(path, "tmp")
    try:
        with writing(path):
            yield tmp
            if tmp.is_file():
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise


def atomic_write_bytes(path: Any, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: Any, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def replacing(path: Any) -> Iterator[None]:
    """Move an existing ``path`` aside while the body makes the new one there; delete the old one
    when the body succeeds, or remove what the body made and put the old one back when it fails.

    Call it only after checking that ``path`` is transferkit's to replace."""
    path = Path(path)
    if not os.path.lexists(path):
        yield
        return
    aside = _temporary_name(path, "old")
    with writing(path, "move aside"):
        os.replace(path, aside)
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(path)
            os.replace(aside, path)
        raise
    with writing(aside, "delete the replaced"):
        _remove(aside)


# ----------------------------------------------------------------------------- inputs


def _real(path: Any) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def check_outside_inputs(out: Any, inputs: Iterable[Any], what: str = "output") -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` (real paths)."""
    target = _real(out)
    inside_prefix = target.rstrip(os.sep) + os.sep
    for item in inputs:
        if item is None or item == "":
            continue
        real = _real(item)
        relation = None
        if real == target:
            relation = "is"
        elif real.startswith(inside_prefix):
            relation = "contains"
        elif target.startswith(real.rstrip(os.sep) + os.sep):
            relation = "lies inside"
        if relation:
            raise UsageError(
                f"{what} {os.fspath(out)} {relation} the input {os.fspath(item)}; transferkit "
                "never writes over its inputs: choose another path (nothing was written)"
            )


# ----------------------------------------------------------------------------- folders


def folder_kind(folder: Any) -> str | None:
    """The ``kind`` in ``folder``'s marker, or None when it has no (readable) marker."""
    marker = Path(folder) / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return str(kind) if kind else None


def mark_folder(folder: Any, kind: str) -> Path:
    """Create ``folder`` if missing and write its marker (``kind``: what it was made for)."""
    from .version import __version__

    folder = Path(folder)
    new = not os.path.lexists(folder)
    ensure_folder(folder)
    if folder_kind(folder) != kind:
        try:
            atomic_write_text(
                folder / MARKER,
                json.dumps({"made_by": "transferkit", "kind": kind, "version": __version__}) + "\n",
            )
        except BaseException:
            if new:  # leave nothing behind: the folder was made for this
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    return folder


def is_empty_folder(folder: Any) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def check_folder(folder: Any, kind: str, *, what: str, hint: str = "") -> bool:
    """Check that transferkit may write into ``folder``: it is missing, empty, or holds the
    marker of ``kind``. Returns whether it already holds that marker; raises ``UsageError``
    otherwise, naming the folder and why (nothing is touched)."""
    path = Path(folder)
    if not os.path.lexists(path):
        return False
    if not path.is_dir():
        raise UsageError(
            f"{what} {path} exists and is not a folder; choose another path (nothing was deleted)"
        )
    found = folder_kind(path)
    if found == kind:
        return True
    if found is None and is_empty_folder(path):
        return False
    why = (
        f"it is a transferkit {found} folder, not a {kind} folder"
        if found
        else f"it holds files transferkit did not make (no {MARKER} marker)"
    )
    raise UsageError(
        f"{what} {path} cannot be used: {why}; choose a new or empty folder"
        + (f" {hint}" if hint else "")
        + " (nothing was deleted)"
    )


def refuse_replacing(path: Any, what: str, why: str) -> UsageError:
    """The ``UsageError`` for an existing ``path`` that is not transferkit's to replace."""
    return UsageError(
        f"{what} {os.fspath(path)} exists and is not {why}, so --overwrite will not replace it; "
        "choose another path or move it away yourself (nothing was deleted)"
    )
