"""Spot-check pairs fanned out over a Dask cluster (many machines), instead of local processes.

``spotcheck(..., scheduler="tcp://host:8786")`` sends every (features x classifier) pair to the
cluster's workers; ``scheduler="local"`` starts a local cluster of ``jobs`` single-threaded
worker processes (useful to try the path on one machine). The split each pair fits on is sent
once per feature set (``Client.scatter``), so workers need no shared disk.

Time-outs: a pair still running after ``timeout`` seconds becomes a ``timeout`` row and the worker
running it is restarted (a thread cannot be stopped otherwise). At most one pair per worker thread
is in flight, so the time a pair waits is the time it runs. Workers must have transferkit and the
plugins of the classifiers installed; plugins registered at run time in this process are
registered on each worker too.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import TransferkitError, UsageError

_worker_plugins: set[str] = set()


def _score_on_worker(task: Any, split: Any, plugins: list[str]) -> dict[str, Any]:
    """Runs on a Dask worker: registers run-time plugins once, then fits and scores the pair."""
    from .jobs import spotcheck

    missing = [p for p in plugins if p not in _worker_plugins]
    if missing:
        spotcheck._register_runtime_plugins(missing)
        _worker_plugins.update(missing)
    return spotcheck.run_pair(task, split)


def connect(scheduler: str, jobs: int) -> Any:
    """A Dask client: ``"local"`` starts a local cluster of ``jobs`` single-threaded processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise TransferkitError(
            "the Dask scheduler needs `dask[distributed]`: pip install 'dask[distributed]'"
        ) from exc
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return Client(cluster)
    try:
        return Client(scheduler)  # waits up to distributed.comm.timeouts.connect
    except (OSError, TimeoutError) as exc:
        raise UsageError(
            f"cannot reach the Dask scheduler at {scheduler!r} ({exc}); start one with "
            f"`dask scheduler` and `dask worker ADDRESS`, or use --scheduler local"
        ) from exc


def _running_worker(client: Any, key: str) -> str | None:
    for worker, keys in client.processing().items():
        if key in keys:
            return str(worker)
    return None


def run_grid_dask(
    tasks: list[Any],
    *,
    scheduler: str,
    jobs: int,
    timeout: float | None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every task on the cluster; rows come back in task order."""
    import sys

    from distributed import wait
    from tqdm import tqdm

    from .jobs.spotcheck import _failed_row, load_split, runtime_plugins

    rows: dict[int, dict[str, Any]] = {}
    bar = tqdm(
        total=len(tasks), desc="spot-check", unit="fit", file=sys.stderr, disable=not progress
    )
    client = connect(scheduler, jobs)
    try:
        slots = max(1, sum(client.nthreads().values()))
        plugins = runtime_plugins()
        splits: dict[str, Any] = {}
        pending = deque(tasks)
        running: dict[Any, tuple[Any, float]] = {}

        def finish(task: Any, row: dict[str, Any]) -> None:
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
                    splits[task.data] = client.scatter([split], hash=False)[0]
                future = client.submit(
                    _score_on_worker, task, splits[task.data], plugins, pure=False
                )
                running[future] = (task, time.monotonic())
            try:
                done = wait(list(running), timeout=0.2, return_when="FIRST_COMPLETED").done
            except TimeoutError:  # nothing finished in that time
                done = set()
            for future in done:
                task, _ = running.pop(future)
                try:
                    row = future.result()
                except Exception as exc:  # the worker died, or the task could not run
                    row = _failed_row(task, "failed", f"{type(exc).__name__}: {exc}")
                finish(task, row)
            now = time.monotonic()
            for future, (task, started) in list(running.items()):
                if timeout is not None and now - started > timeout:
                    worker = _running_worker(client, future.key)
                    future.cancel()
                    running.pop(future)
                    if worker is not None:
                        with contextlib.suppress(Exception):
                            client.restart_workers([worker])
                    finish(
                        task, _failed_row(task, "timeout", f"killed after {timeout:g}s (--timeout)")
                    )
    finally:
        bar.close()
        cluster = getattr(client, "cluster", None)
        client.close()
        if scheduler == "local" and cluster is not None:
            cluster.close()
    return [rows[t.index] for t in tasks]
