"""Spot-checks on real stores of the digits: rows, failures, time-outs, parallel == serial."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import BaseEstimator, ClassifierMixin
from test_train import write_digits

from transferkit import ClassifierSpec, api, hookimpl
from transferkit.cli import build_cli


class Explodes(ClassifierMixin, BaseEstimator):
    def fit(self, X: Any, y: Any) -> Explodes:
        raise RuntimeError("this classifier always fails")


class Sleeps(ClassifierMixin, BaseEstimator):
    """Hangs, after starting a process of its own (as an ``n_jobs=-1`` estimator would)."""

    def fit(self, X: Any, y: Any) -> Sleeps:
        pidfile = os.environ.get("TRANSFERKIT_TEST_PIDFILE")
        if pidfile:
            child = subprocess.Popen(["sleep", "120"])
            Path(pidfile).write_text(str(child.pid))
        time.sleep(120)
        return self


class Dies(ClassifierMixin, BaseEstimator):
    """Takes its worker process down, as a crash in native code would."""

    def fit(self, X: Any, y: Any) -> Dies:
        os._exit(3)


class FaultyClassifiers:
    """A plugin with a classifier that raises, one that hangs and one that kills its process."""

    @hookimpl
    def register_classifiers(self, register: Any) -> None:
        register(ClassifierSpec(name="explodes", description="raises", factory=Explodes))
        register(ClassifierSpec(name="sleeps", description="hangs", factory=Sleeps))
        register(ClassifierSpec(name="dies", description="exits", factory=Dies))


class Recorder:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @hookimpl
    def on_spotcheck_result(self, row: Any) -> None:
        self.rows.append(dict(row))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("spot")
    return [write_digits(folder / "pixels.h5"), write_digits(folder / "first-900.zarr", rows=900)]


def metrics(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    keys = ("backbone", "classifier", "status", "accuracy", "macro_f1", "balanced_accuracy")
    return [tuple(r[k] for k in keys) for r in report["rows"]]


def test_failing_and_hanging_models_are_rows(
    stores: list[Path], tmp_path: Path, register_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("TRANSFERKIT_TEST_PIDFILE", str(pidfile))
    register_plugin(FaultyClassifiers(), "faulty")
    recorder = register_plugin(Recorder(), "recorder")
    start = time.monotonic()
    report = api.spotcheck(
        [str(stores[0])],
        classifiers="explodes,sleeps,dies,logistic-regression,nearest-centroid",
        timeout=4,
        jobs=2,
        out=tmp_path / "report",
        progress=False,
    )
    assert time.monotonic() - start < 60  # the sleeper was killed, not waited for
    rows = {r["classifier"]: r for r in report["rows"]}
    assert rows["explodes"]["status"] == "failed"
    assert "this classifier always fails" in rows["explodes"]["error"]
    assert rows["sleeps"]["status"] == "timeout" and rows["sleeps"]["accuracy"] is None
    assert rows["dies"]["status"] == "failed"
    assert "worker process died (exit code 3)" in rows["dies"]["error"]
    # the pairs after the lost workers still ran, on their replacements
    assert rows["nearest-centroid"]["status"] == "ok"
    assert rows["logistic-regression"]["status"] == "ok"
    assert rows["logistic-regression"]["accuracy"] > 0.93
    assert report["best_model"] == "logistic-regression"
    assert report["best_features"] == "pixels"
    assert report["counts"] == {"ok": 2, "failed": 2, "timeout": 1}
    assert sorted(r["classifier"] for r in recorder.rows) == sorted(rows)
    # the hung fit's own child process was killed with it
    import psutil

    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and time.monotonic() < deadline:
        if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.1)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE

    out = tmp_path / "report"
    saved = json.loads((out / "report.json").read_text())
    assert saved["best_accuracy"] == rows["logistic-regression"]["accuracy"]
    with open(out / "report.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 5
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "heatmap.png" in page and "<script>" in page and "explodes" in page


def test_parallel_equals_serial(stores: list[Path]) -> None:
    grid = "logistic-regression,random-forest,knn-3,sgd,decision-tree,river-logreg"
    serial = api.spotcheck([str(s) for s in stores], classifiers=grid, jobs=1, progress=False)
    parallel = api.spotcheck([str(s) for s in stores], classifiers=grid, jobs=3, progress=False)
    assert metrics(serial) == metrics(parallel)
    assert len(serial["rows"]) == 12 and serial["counts"]["ok"] == 12
    by_pair = {(r["backbone"], r["classifier"]): r["accuracy"] for r in serial["rows"]}
    assert by_pair[("pixels", "random-forest")] > 0.95
    assert by_pair[("first-900", "knn-3")] > 0.9
    # an in-process loop (the benchmark's baseline) gives the same numbers too
    inline = api.spotcheck(
        [str(s) for s in stores], classifiers=grid, isolate=False, progress=False
    )
    assert metrics(inline) == metrics(serial)


def test_cli_prints_the_best_pair(stores: list[Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        build_cli(),
        [
            "spotcheck",
            str(stores[0]),
            "-c",
            "ridge-1,knn-5",
            "-j",
            "2",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Best: knn-5 on pixels" in result.stdout
    assert "heatmap.png" in result.stdout
    folder = CliRunner().invoke(build_cli(), ["spotcheck", str(tmp_path), "-c", "knn-5"])
    assert folder.exit_code == 2 and "--backbones" in folder.output


def test_report_rows_are_seeded(stores: list[Path]) -> None:
    a = api.spotcheck([str(stores[1])], classifiers="random-forest", seed=1, progress=False)
    b = api.spotcheck([str(stores[1])], classifiers="random-forest", seed=2, progress=False)
    assert np.isfinite(a["rows"][0]["accuracy"]) and a["rows"][0]["accuracy"] > 0.85
    assert metrics(a) != metrics(b)  # another seed: another split and forest


@pytest.mark.slow
def test_dask_cluster_gives_the_same_rows_with_failures_and_timeouts(
    stores: list[Path], register_plugin: Any, tmp_path: Path
) -> None:
    register_plugin(FaultyClassifiers(), "faulty")
    common: dict[str, Any] = {
        "classifiers": "logistic-regression,nearest-centroid,explodes,sleeps",
        "timeout": 10,  # room for a loaded machine; the sleepers hang for 120 s
        "progress": False,
    }
    # the reference: the same grid on local workers, without the sleepers (whose timeouts on
    # local workers test_failing_and_hanging_models_are_rows shows), so it waits for nothing
    awake = common["classifiers"].replace(",sleeps", "")
    local = api.spotcheck([str(s) for s in stores], jobs=2, **{**common, "classifiers": awake})
    start = time.monotonic()
    on_dask = api.spotcheck([str(s) for s in stores], jobs=2, scheduler="local", **common)
    assert time.monotonic() - start < 120  # the sleepers were given up on, not waited for
    sleepers = [r for r in on_dask["rows"] if r["classifier"] == "sleeps"]
    assert len(sleepers) == len(stores)
    assert all(r["status"] == "timeout" and r["accuracy"] is None for r in sleepers)
    on_dask_awake = {**on_dask, "rows": [r for r in on_dask["rows"] if r["classifier"] != "sleeps"]}
    assert metrics(on_dask_awake) == metrics(local)
    statuses = {(r["backbone"], r["classifier"]): r["status"] for r in on_dask["rows"]}
    assert statuses[("pixels", "sleeps")] == "timeout"
    assert statuses[("pixels", "explodes")] == "failed"
    assert statuses[("first-900", "logistic-regression")] == "ok"
    assert on_dask["best_model"] == local["best_model"] == "logistic-regression"


def test_unreachable_dask_scheduler_is_a_usage_error(stores: list[Path]) -> None:
    import dask
    import distributed  # noqa: F401  its config defaults first: leaving set() would drop them

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        result = CliRunner().invoke(
            build_cli(),
            [
                "spotcheck",
                str(stores[0]),
                "-c",
                "nearest-centroid",
                "--scheduler",
                "tcp://127.0.0.1:9",
            ],
        )
    assert result.exit_code == 2
    assert "cannot reach the Dask scheduler" in result.stderr


def test_stores_may_be_given_as_paths(stores: list[Path]) -> None:
    one = api.spotcheck(stores[1], classifiers="nearest-centroid", jobs=1, progress=False)
    both = api.spotcheck(list(stores), classifiers="nearest-centroid", jobs=1, progress=False)
    assert [r["status"] for r in one["rows"]] == ["ok"]
    assert [r["status"] for r in both["rows"]] == ["ok", "ok"]


def test_workers_fit_the_costliest_pairs_first_and_rows_keep_the_grid_order(
    stores: list[Path], register_plugin: Any
) -> None:
    recorder = register_plugin(Recorder(), "recorder")
    grid = "nearest-centroid,ridge-1,decision-tree,knn-3"  # cost hints 0.5, 1, 2, 0.5
    report = api.spotcheck([str(stores[0])], classifiers=grid, jobs=1, progress=False)
    # one worker: rows arrive in the order the pairs were handed out
    assert [r["classifier"] for r in recorder.rows] == [
        "decision-tree",
        "ridge-1",
        "nearest-centroid",
        "knn-3",
    ]
    assert [r["classifier"] for r in report["rows"]] == grid.split(",")
    assert report["counts"]["ok"] == 4


FIRST_PAIR = """
import json, sys, tempfile
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

from transferkit.jobs.spotcheck_runner import Task, run_pair, save_split

assert "sklearn" not in sys.modules and "scipy" not in sys.modules
seen = []


def factory():
    from sklearn.linear_model import LogisticRegression  # SciPy's BLAS and OpenMP load now

    class Probe(LogisticRegression):
        def fit(self, X, y):
            seen.extend((i["internal_api"], i["num_threads"]) for i in threadpool_info())
            return super().fit(X, y)

    return Probe(max_iter=200)


rng = np.random.default_rng(0)
X, y = rng.normal(size=(90, 8)), np.arange(90) % 3
folder = save_split(Path(tempfile.mkdtemp()), X[:60], y[:60], X[60:], y[60:], 3)
row = run_pair(Task(0, "noise", "probe", str(folder), 0, factory=factory))
print(json.dumps({"status": row["status"], "error": row["error"], "seen": seen}))
"""


@pytest.mark.process
def test_the_first_pair_of_a_process_fits_on_one_thread_of_every_library() -> None:
    """The serial loop's first pair (the benchmark's baseline) imports scikit-learn as it builds
    the estimator; the libraries that brings are limited for the fit too."""
    limits = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in limits}  # the libraries' defaults
    done = subprocess.run(
        [sys.executable, "-c", FIRST_PAIR], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok", result["error"]
    apis = {api for api, _ in result["seen"]}
    assert {"openblas", "openmp"} <= apis  # the libraries scikit-learn brought were seen
    assert {threads for _, threads in result["seen"]} == {1}


def test_built_in_classifiers_go_to_workers_by_factory(register_plugin: Any) -> None:
    """Workers build a built-in classifier from its factory (no plugin loading there); a
    runtime plugin's classifier is built by name, where the plugin is registered again."""
    import pickle

    from transferkit import registry
    from transferkit.jobs.spotcheck_runner import Task, build_model, builtin_factory

    register_plugin(FaultyClassifiers(), "faulty")
    assert builtin_factory("random-forest") is registry.classifier("random-forest").factory
    for name in ("knn-3", "linear-svc-0.001", "random-forest"):  # bound parameters travel too
        factory = pickle.loads(pickle.dumps(builtin_factory(name)))
        task = Task(0, "f", name, "", 7, factory=factory)
        by_name = build_model(Task(0, "f", name, "", 7))
        assert repr(build_model(task).get_params()) == repr(by_name.get_params())
    assert builtin_factory("explodes") is None
    assert builtin_factory("no-such-classifier") is None
