"""The spot-check's Dask runner: pairs fanned out over a cluster (many machines), not processes.

``spotcheck(..., scheduler="tcp://host:8786")`` sends every (features x classifier) pair to the
cluster's workers; ``scheduler="local"`` starts a local cluster of ``jobs`` single-threaded
worker processes (useful to try the path on one machine). The split each pair fits on is sent
once per feature set (``Client.scatter``), so workers need no shared disk.

Time-outs: a pair still running after ``timeout`` seconds becomes a ``timeout`` row and the worker
running it is restarted (a thread cannot be stopped otherwise). At most one pair per worker thread
is in flight, so the time a pair waits is the time it runs; each worker imports the libraries a
pair needs as it joins (``_Preload``), before any pair's clock starts. Each split is copied to
every worker (``broadcast``), so restarting one does not lose it; a pair whose split was lost all
the same is sent again (twice at most). Workers must have transferkit and the plugins of the
classifiers installed; plugins registered at run time in this process are registered on each
worker too. The connection is :mod:`transferkit.cluster`'s; the tasks, the fitting of one pair
and the rows of failures are the local runner's (:mod:`transferkit.jobs.spotcheck_runner`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from .. import cluster
from .spotcheck_runner import (
    PRELOAD,
    Task,
    failed_row,
    load_split,
    register_runtime_plugins,
    run_pair,
    runtime_plugins,
)

log = logging.getLogger(__name__)
_worker_plugins: set[str] = set()


class _Preload(WorkerPlugin):
    """Imports what a pair needs as a worker joins (a restarted one too), so that a pair's
    time-out measures its fit, not a fresh worker's imports (as the local fork server does)."""

    def setup(self, worker: Any) -> None:
        import importlib

        for name in (*PRELOAD, __name__):
            with contextlib.suppress(Exception):
                importlib.import_module(name)


def _score_on_worker(task: Task, split: Any, plugins: list[str]) -> dict[str, Any]:
    """Runs on a Dask worker: registers run-time plugins once, then fits and scores the pair."""
    missing = [p for p in plugins if p not in _worker_plugins]
    if missing:
        register_runtime_plugins(missing)
        _worker_plugins.update(missing)
    return run_pair(task, split)


def run_grid_dask(
    tasks: list[Task],
    *,
    scheduler: str,
    jobs: int,
    timeout: float | None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every task on the cluster; rows come back in task order."""
    from distributed import wait
    from tqdm import tqdm

    rows: dict[int, dict[str, Any]] = {}
    bar = tqdm(
        total=len(tasks), desc="spot-check", unit="fit", file=sys.stderr, disable=not progress
    )
    client = cluster.connect(scheduler, jobs)
    try:
        if scheduler != "local" and (line := cluster.dashboard_line(client, "spot-check")):
            log.info(line)
        client.register_plugin(_Preload(), name="transferkit-spotcheck-preload")
        slots = max(1, sum(client.nthreads().values()))
        plugins = runtime_plugins()
        splits: dict[str, Any] = {}
        pending = deque(tasks)
        running: dict[Any, tuple[Task, float]] = {}
        resent: Counter[int] = Counter()

        def finish(task: Task, row: dict[str, Any]) -> None:
            rows[task.index] = row
            bar.update(1)
            if on_row is not None:
                on_row(row)

        while pending or running:
            while pending and len(running) < slots:
                task = pending.popleft()
                if task.data not in splits:
                    # one future holding the whole split (scattering a dict would name the
                    # futures by its keys, the same for every split), in memory, not mapped
                    split = {k: np.array(v) for k, v in load_split(task.data).items()}
                    splits[task.data] = client.scatter([split], hash=False, broadcast=True)[0]
                future = client.submit(
                    _score_on_worker, task, splits[task.data], plugins, pure=False
                )
                running[future] = (task, time.monotonic())
            try:
                done = wait(list(running), timeout=0.2, return_when="FIRST_COMPLETED").done
            except TimeoutError:  # nothing finished in that time
                done = set()
            except CancelledError:  # a split went with a worker restarted for a late pair
                done = {f for f in running if f.done()}
            for future in done:
                task, _ = running.pop(future)
                if future.cancelled() and resent[task.index] < 2:
                    resent[task.index] += 1
                    splits.pop(task.data, None)  # scattered again with the task
                    pending.appendleft(task)
                    continue
                try:
                    row = future.result()
                except Exception as exc:  # the worker died, or the task could not run
                    row = failed_row(task, "failed", f"{type(exc).__name__}: {exc}")
                finish(task, row)
            now = time.monotonic()
            for future, (task, started) in list(running.items()):
                if timeout is not None and now - started > timeout:
                    worker = cluster.running_worker(client, future.key)
                    future.cancel()
                    running.pop(future)
                    if worker is not None:
                        with contextlib.suppress(Exception):
                            client.restart_workers([worker])
                    finish(
                        task, failed_row(task, "timeout", f"killed after {timeout:g}s (--timeout)")
                    )
    finally:
        bar.close()
        cluster.close(client, scheduler)
    return [rows[t.index] for t in tasks]
