"""One writer at a time: a lock file beside what is written, holding the writer's process id.

``<path>.lock`` is created exclusively and holds the writer's process id. A lock whose process
is gone (a killed run) is stale and taken over; one held by another live process is refused
with :class:`StoreLockedError`. The store writers lock a store with it, and the spot-check its
report folder's journal.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import TransferkitError
from ..outputs import output_error, writing


class StoreLockedError(TransferkitError):
    """Another live process is writing the store."""


def lock_path(path: str | os.PathLike[str]) -> str:
    """The lock file of ``path``: ``<path>.lock`` (a folder's without its trailing slash)."""
    return os.fspath(path).rstrip("/") + ".lock"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_pid(lock: str) -> int:
    """The process id a lock file holds (0 when it cannot be read)."""
    try:
        return int(Path(lock).read_text().strip() or "0")
    except (OSError, ValueError):
        return 0


def lock_holder(path: str | os.PathLike[str]) -> int | None:
    """The live process (not this one) that holds the writer lock of the store at ``path``, if
    any: lets a job refuse a second writer before it loads a network."""
    pid = _lock_pid(lock_path(path))
    return pid if pid != os.getpid() and _pid_alive(pid) else None


def locked_message(path: str | os.PathLike[str], pid: int) -> str:
    """What a second writer of the store at ``path`` is told while process ``pid`` writes it."""
    return (
        f"{os.fspath(path)} is being written by process {pid}; wait for it to finish or stop it "
        f"(if no process writes it, delete {lock_path(path)})"
    )


def refuse_locked(path: str | os.PathLike[str]) -> None:
    """Raise :class:`StoreLockedError` when another live process holds the lock of ``path``."""
    pid = lock_holder(path)
    if pid is not None:
        raise StoreLockedError(locked_message(path, pid))


class PidLock:
    """The lock of ``path``. :meth:`acquire` takes it (or a stale one), :meth:`release` drops it.

    ``busy(pid)`` is the message when process ``pid`` holds it (by default
    :func:`locked_message`); ``idle`` ends the message of a lock that cannot be taken over
    ("delete the lock file if ...").
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy: Callable[[int], str] | None = None,
        idle: str = "no process writes it",
    ) -> None:
        self.path = os.fspath(path)
        self.file = lock_path(path)
        self._busy = busy or (lambda pid: locked_message(self.path, pid))
        self._idle = idle
        self.held = False

    def acquire(self) -> None:
        """Create the lock file with this process's id; refuse a live holder, replace a stale
        lock. A file system that cannot take the file (read-only, no permission) is an
        ``OutputError``."""
        for _ in range(2):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = _lock_pid(self.file)
                if pid != os.getpid() and _pid_alive(pid):
                    raise StoreLockedError(self._busy(pid)) from None
                # a stale lock left by a killed process
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.file)
                continue
            except OSError as exc:  # a read-only file system, no permission
                raise output_error(self.file, exc, "create the lock file") from exc
            self.held = True
            try:
                with writing(self.file, "write the lock file"), os.fdopen(fd, "w") as fh:
                    fh.write(str(os.getpid()))
            except BaseException:
                self.release()
                raise
            return
        raise StoreLockedError(f"cannot lock {self.path}; delete {self.file} if {self._idle}")

    def release(self) -> None:
        """Remove the lock file, if this lock holds it."""
        if self.held:
            self.held = False
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.file)
