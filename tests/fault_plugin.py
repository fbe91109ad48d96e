"""A plugin that holds a job still at a chosen point so that a test can kill it exactly there.

Installed through a real ``transferkit`` entry point (see ``test_faults.py``). With
``FAULTS_PAUSE=KIND:N`` the N-th event of that kind writes the file ``FAULTS_MARK`` and sleeps:

* ``batch:N`` -- after the N-th batch of an extraction is handed to the store (between flushes);
* ``resize:N`` -- inside a store flush, after the N-th array was grown and before its rows are
  written (store formats ``paused-hdf5``, ``.ph5``, and ``paused-zarr``, ``.pzarr``: the
  built-in formats with that one pause);
* ``epoch:N`` -- after the N-th training epoch of a fine-tuning run.

With ``FAULTS_LOG`` set, each finished training epoch's number is appended to that file.
Without either it changes nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from transferkit import StoreSpec, hookimpl
from transferkit.plugins.stores import HDF5Store, ZarrStore

_seen: dict[str, int] = {}


def pause_at(kind: str) -> None:
    wanted, _, count = os.environ.get("FAULTS_PAUSE", "").partition(":")
    if wanted != kind:
        return
    _seen[kind] = _seen.get(kind, 0) + 1
    if _seen[kind] == int(count):
        Path(os.environ["FAULTS_MARK"]).write_text(f"{kind}:{count} {os.getpid()}\n")
        time.sleep(600)


class PausedHDF5(HDF5Store):
    name = "paused-hdf5"
    suffixes = (".ph5",)

    @classmethod
    def resize_array(cls, array: Any, rows: int) -> None:
        super().resize_array(array, rows)
        pause_at("resize")


class PausedZarr(ZarrStore):
    name = "paused-zarr"
    suffixes = (".pzarr",)

    @classmethod
    def resize_array(cls, array: Any, rows: int) -> None:
        super().resize_array(array, rows)
        pause_at("resize")


@hookimpl
def register_feature_stores(register: Any) -> None:
    for store in (PausedHDF5, PausedZarr):
        register(
            StoreSpec(
                name=store.name,
                description=f"{store.name}: pauses inside a flush when told to",
                factory=lambda store=store: store,
                suffixes=store.suffixes,
            )
        )


@hookimpl
def on_extract_batch() -> None:
    pause_at("batch")


@hookimpl
def on_epoch_end(epoch: int) -> None:
    log = os.environ.get("FAULTS_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{epoch}\n")
    pause_at("epoch")
