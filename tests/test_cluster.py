"""The Dask connection the Dask runners share: a local cluster, its line, and the running worker."""

from __future__ import annotations

import importlib.util
import time

import pytest

from transferkit import cluster

# a local Dask cluster starts worker processes
pytestmark = pytest.mark.process


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_local_cluster_names_itself_and_the_worker_running_a_task() -> None:
    client = cluster.connect("local", 1)
    try:
        assert sum(client.nthreads().values()) == 1  # one single-threaded worker process
        line = cluster.dashboard_line(client, "extraction")
        assert line is not None and line.startswith("extraction on the Dask cluster at tcp://")
        link = cluster.dashboard_link(client)
        if importlib.util.find_spec("bokeh"):  # the scheduler runs here: its page needs bokeh
            assert link == client.dashboard_link
            assert line.endswith(f"(1 workers); dashboard: {link}")
        else:
            assert link is None and line.endswith(f"(1 workers); {cluster.NO_DASHBOARD}")
        future = client.submit(_nap, 30, pure=False)
        deadline = time.monotonic() + 60
        worker = None
        while worker is None and time.monotonic() < deadline:
            worker = cluster.running_worker(client, future.key)
            time.sleep(0.1)
        assert worker == next(iter(client.nthreads()))
        assert cluster.running_worker(client, "no-such-key") is None
        future.cancel()
    finally:
        local = client.cluster
        cluster.close(client, "local")
    assert local.status.name == "closed" and client.status == "closed"
