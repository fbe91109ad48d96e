"""A Dask cluster to fan work out over: the connection every Dask runner shares.

:func:`connect` returns a ``distributed.Client`` for a scheduler address (``tcp://host:8786``)
or, for ``"local"``, a local cluster of single-threaded worker processes (to try a cluster path
on one machine); an unreachable scheduler is a :class:`~transferkit.errors.UsageError` that says
how to start one. :func:`close` ends the client (and a local cluster it started),
:func:`dashboard_link` is the scheduler's dashboard (where it serves one), :func:`dashboard_line`
the line that tells the user where to watch, and
:func:`running_worker` finds the worker running a task (to restart it when the task is late).
Imports only ``distributed`` (inside the functions) and ``transferkit.errors``.
"""

from __future__ import annotations

from typing import Any

from .errors import TransferkitError, UsageError


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


def close(client: Any, scheduler: str) -> None:
    """Close ``client``, and the local cluster :func:`connect` started for ``"local"``."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if scheduler == "local" and cluster is not None:
        cluster.close()


NO_DASHBOARD = "no Dask dashboard (the scheduler serves none: install bokeh beside it to get one)"


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def dashboard_link(client: Any) -> str | None:
    """The address of the scheduler's dashboard, or None when it serves none: no dashboard
    service, or no bokeh beside the scheduler (the page needs it; Dask's link is printed
    either way)."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        if not client.run_on_scheduler(_has_bokeh):
            return None
        return str(client.dashboard_link)
    except Exception:
        return None


def dashboard_line(client: Any, what: str) -> str | None:
    """``"<what> on the Dask cluster at ADDRESS (N workers); dashboard: URL"`` (or why there is
    no dashboard), or None when the client cannot say."""
    try:
        address = client.scheduler.address
        workers = len(client.nthreads())
    except Exception:
        return None
    link = dashboard_link(client)
    return f"{what} on the Dask cluster at {address} ({workers} workers); " + (
        f"dashboard: {link}" if link else NO_DASHBOARD
    )


def running_worker(client: Any, key: str) -> str | None:
    """The address of the worker running the task ``key``, or None when none is."""
    for worker, keys in client.processing().items():
        if key in keys:
            return str(worker)
    return None
