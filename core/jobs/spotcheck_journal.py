"""The spot-check's journal: finished rows kept across runs, so a rerun computes only the rest.

With ``out``, each finished row is appended to ``out/spotcheck-journal.jsonl`` as it completes,
under a key of the settings (:func:`journal_key`: the stores' identities, the split's seed and
size, the test stores, the transferkit version). A rerun with the same settings reads the rows
back (:meth:`Journal.load`); the journal is removed once the report is complete. One spot-check
at a time writes a report folder (a lock file beside the journal).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import outputs
from ..store.lock import PidLock
from .spotcheck_report import REPORT_KIND
from .spotcheck_runner import ROW_FIELDS, FeatureSource

JOURNAL_NAME = "spotcheck-journal.jsonl"


def _identity(path: str) -> list[Any]:
    """A store's identity for the journal key: its path, and the size and modification time of
    its file (or of every file of a store folder)."""
    location = Path(path)
    files = [location] if location.is_file() else sorted(location.rglob("*"))
    stamps = []
    for item in files:
        with contextlib.suppress(OSError):
            st = item.stat()
            if item.is_file():
                stamps.append([str(item.relative_to(location.parent)), st.st_size, st.st_mtime_ns])
    return [os.path.abspath(path), stamps]


def journal_key(
    sources: Sequence[FeatureSource],
    test_size: float,
    seed: int,
    store: Any,
    tests: list[str | None] | None = None,
) -> str:
    """What a journal's rows depend on, besides the pair itself: the same key, the same rows."""
    from ..version import __version__

    key = {
        "version": __version__,
        "test_size": test_size,
        "tests": [None if t is None else _identity(t) for t in (tests or [])],
        "seed": seed,
        "store": store,
        "sources": [[s.name, _identity(s.path)] for s in sources],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class Journal:
    """Finished rows of one spot-check, one JSON line each, appended as they complete.

    The first line holds the settings key; a journal made with other settings is replaced. A
    line cut short by a kill is ignored (that pair is computed again)."""

    def __init__(self, folder: Path, key: str) -> None:
        self.path = folder / JOURNAL_NAME
        self.key = key
        self._fh: Any = None
        self._locked: PidLock | None = None

    def load(self, timeout: float | None) -> dict[tuple[str, str], dict[str, Any]]:
        """The rows of an earlier run with the same key, by (features, classifier). A
        ``timeout`` row counts only under the same ``--timeout``."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            lines = self.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return rows
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            return rows
        if not isinstance(header, dict) or header.get("key") != self.key:
            return rows
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                saved = entry["row"]  # one journalled before "ece" was a field has none
                row = {k: saved.get(k) if k == "ece" else saved[k] for k in ROW_FIELDS}
            except (ValueError, KeyError, TypeError):
                continue
            if row["status"] == "timeout" and entry.get("timeout") != timeout:
                continue
            rows[(str(row["backbone"]), str(row["classifier"]))] = row
        return rows

    def _lock(self) -> None:
        """One spot-check at a time per output folder; a lock left by a killed run is taken."""
        self._locked = PidLock(
            self.path,
            busy=lambda pid: (
                f"{self.path.parent} is being written by another spot-check (process {pid}); "
                f"wait for it to finish or pass another --out"
            ),
            idle="no spot-check runs",
        )
        self._locked.acquire()

    def open(self, kept: list[dict[str, Any]], timeout: float | None) -> None:
        """Start the journal afresh with the rows kept from the last run, then append. The
        folder (checked by :func:`check_report_folder`) is marked as a report folder first."""
        folder = self.path.parent
        new = not os.path.lexists(folder)
        try:
            outputs.mark_folder(folder, REPORT_KIND)
            self._lock()
            lines = [json.dumps({"key": self.key})]
            lines += [json.dumps({"row": row, "timeout": timeout}, default=str) for row in kept]
            outputs.atomic_write_text(self.path, "\n".join(lines) + "\n")
            with outputs.writing(self.path, "write the spot-check journal"):
                self._fh = open(self.path, "a")  # noqa: SIM115 -- closed by close()
        except BaseException:
            self.close()
            if new:  # a folder made for this run and nothing in it yet: leave nothing behind
                shutil.rmtree(folder, ignore_errors=True)
            raise
        self._timeout = timeout

    def append(self, row: dict[str, Any]) -> None:
        if self._fh is None:
            return
        entry = {"row": {k: row.get(k) for k in ROW_FIELDS}, "timeout": self._timeout}
        with outputs.writing(self.path, "write the spot-check journal"):
            self._fh.write(json.dumps(entry, default=str) + "\n")
            self._fh.flush()

    def close(self, remove: bool = False) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._locked is not None:
            self._locked.release()
            self._locked = None
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
