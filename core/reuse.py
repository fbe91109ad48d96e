"""Built networks and loaded models, kept for reuse while a :func:`kept` block runs.

A job builds its network and loads its model on every call, and lets them go when it returns.
A caller that calls a job many times over the same model (``transferkit serve``, one call per
micro-batch) wraps its calls in ``with kept():``: inside, the first :func:`reuse` of a key
makes the value and later ones with an equal key get the same value back; when the outermost
block ends, everything is let go. Outside a block :func:`reuse` just makes the value.

The keys say everything the value depends on (a model file's path with its size and
modification time, a recipe, a runtime), so a changed file is loaded again.

No TensorFlow, no NumPy: this module is on the bottom floor.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_kept: dict[Hashable, Any] | None = None
_lock = threading.RLock()


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Keep what :func:`reuse` makes until the outermost ``with kept():`` ends."""
    global _kept
    with _lock:
        outermost = _kept is None
        if outermost:
            _kept = {}
    try:
        yield
    finally:
        if outermost:
            with _lock:
                _kept = None


def reuse(key: Hashable, make: Callable[[], T]) -> T:
    """``make()``, or inside a :func:`kept` block the value made before for an equal ``key``."""
    with _lock:
        store = _kept
        if store is None:
            return make()
        if key not in store:
            store[key] = make()
        return store[key]  # type: ignore[no-any-return]


def file_key(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """A file's resolved path, size and modification time (nanoseconds): part of a key, so that
    a file written again is read again."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_size, stat.st_mtime_ns
