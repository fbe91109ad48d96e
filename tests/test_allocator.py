"""TensorFlow's CPU allocator: transferkit chooses BFC for every TensorFlow it starts (the job's
own process, spot-check workers, Dask workers), a user's value wins, and the OpenVINO and LiteRT
runtimes work beside it in one process.

Whether TensorFlow really runs on BFC is seen from TensorFlow itself: with
``TF_CPU_BFC_MEM_LIMIT_IN_MB`` small, a tensor over the cap fails in the BFC allocator by name,
while TensorFlow's default allocator ignores the cap."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_faults import QUIET_ENV
from imagefiles import make_folder
from sklearn.base import BaseEstimator, ClassifierMixin
from test_train import write_digits

from transferkit import allocator, api

TESTS = Path(__file__).resolve().parent
PROBE_ENV = "TRANSFERKIT_TEST_ALLOCATOR_PROBE"

# A child: a job per runtime on the tiny network, then a tensor over the BFC cap (256 MB).
CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import transferkit  # first, as a user's program would
import numpy as np
import tiny_backbone
from transferkit.store import open_store

features = {{}}
for runtime in {runtimes!r}:
    out = {tmp!r} + "/" + runtime + ".h5"
    transferkit.extract({images!r}, backbone=tiny_backbone.build(), out=out, runtime=runtime,
                        progress=False)
    with open_store(out) as reader:
        features[runtime] = np.asarray(reader.read_rows(np.arange(len(reader.labels)))[0])
same = [bool(np.allclose(features[r], features["keras"], rtol=1e-4, atol=1e-4))
        for r in features]

import os
import tensorflow as tf
try:
    tf.zeros((128, 1024, 1024)).numpy()  # 512 MB
    allocated = "default allocator"
except tf.errors.ResourceExhaustedError as exc:
    allocated = "bfc" if "bfc_cpu_allocator" in str(exc) else str(exc)
print(json.dumps([os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"), allocated, same]))
"""


def child_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != allocator.ALLOCATOR_ENV}
    env.update(QUIET_ENV, TF_CPU_BFC_MEM_LIMIT_IN_MB="256", **values)
    return env


def run_child(tmp_path: Path, runtimes: tuple[str, ...], **env: str) -> list[Any]:
    import subprocess

    images = tmp_path / "images"
    if not images.exists():
        make_folder(images, per_class=3, size=32)
    code = CHILD.format(tests=str(TESTS), runtimes=runtimes, tmp=str(tmp_path), images=str(images))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=child_env(TRANSFERKIT_CACHE=str(tmp_path / "cache"), **env),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: list[Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.process
@pytest.mark.slow
def test_a_job_runs_on_bfc_beside_openvino_and_litert(tmp_path: Path) -> None:
    value, allocated, same = run_child(tmp_path, ("keras", "openvino", "litert"))
    assert value == "true"
    assert allocated == "bfc"
    assert same == [True, True, True]  # every runtime's features, equal to Keras'


@pytest.mark.process
@pytest.mark.slow
def test_a_users_value_wins_in_the_jobs_process(tmp_path: Path) -> None:
    value, allocated, same = run_child(tmp_path, ("keras",), TF_CPU_ALLOCATOR_USE_BFC="false")
    assert value == "false"
    assert allocated == "default allocator"
    assert same == [True]


def test_the_package_chooses_bfc_unless_the_environment_says(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(allocator.ALLOCATOR_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    with caplog.at_level(logging.DEBUG, logger="transferkit.allocator"):
        assert allocator.choose_cpu_allocator() == "true"
    assert os.environ[allocator.ALLOCATOR_ENV] == "true"
    assert not caplog.records  # TensorFlow not imported yet: nothing to say
    for value in ("false", "0", "true"):
        monkeypatch.setenv(allocator.ALLOCATOR_ENV, value)
        assert allocator.choose_cpu_allocator() == value
        assert os.environ[allocator.ALLOCATOR_ENV] == value
    # TensorFlow imported before transferkit: one debug line says the setting may be too late
    monkeypatch.delenv(allocator.ALLOCATOR_ENV)
    monkeypatch.setitem(sys.modules, "tensorflow", sys)
    with caplog.at_level(logging.DEBUG, logger="transferkit.allocator"):
        assert allocator.choose_cpu_allocator() == "true"
    assert len(caplog.records) == 1
    assert "imported before transferkit" in caplog.records[0].getMessage()


class AllocatorProbe(ClassifierMixin, BaseEstimator):
    """Predicts the first class; its fit writes where it ran and the allocator setting there."""

    def fit(self, X: Any, y: Any) -> AllocatorProbe:
        self.classes_ = np.unique(y)
        seen = {"pid": os.getpid(), "value": os.environ.get(allocator.ALLOCATOR_ENV)}
        Path(os.environ[PROBE_ENV]).write_text(json.dumps(seen))
        return self

    def predict(self, X: Any) -> Any:
        return np.full(len(X), self.classes_[0])


def probe(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **how: Any) -> Any:
    seen = tmp_path / "seen.json"
    seen.unlink(missing_ok=True)
    monkeypatch.setenv(PROBE_ENV, str(seen))
    report = api.spotcheck([str(store)], classifiers=[AllocatorProbe()], progress=False, **how)
    assert report["counts"]["ok"] == 1, report["rows"]
    found = json.loads(seen.read_text())
    assert found["pid"] != os.getpid()  # it ran in a worker
    return found["value"]


def test_spotcheck_workers_get_the_setting_and_a_users_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = write_digits(tmp_path / "digits.h5", rows=300)
    monkeypatch.delenv(allocator.ALLOCATOR_ENV, raising=False)
    allocator.choose_cpu_allocator()  # what importing transferkit did
    assert probe(store, tmp_path, monkeypatch, jobs=1) == "true"
    monkeypatch.setenv(allocator.ALLOCATOR_ENV, "false")  # a user's, set after the fork server
    assert probe(store, tmp_path, monkeypatch, jobs=1) == "false"


@pytest.mark.slow
def test_a_dask_worker_chooses_bfc_when_it_imports_transferkit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = write_digits(tmp_path / "digits.h5", rows=300)
    # a worker started without the variable (as `dask worker` on another machine would be)
    monkeypatch.delenv(allocator.ALLOCATOR_ENV, raising=False)
    assert probe(store, tmp_path, monkeypatch, jobs=1, scheduler="local") == "true"
