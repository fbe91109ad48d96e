"""The library logs: a program calling ``transferkit`` sees its warnings as any library's, and
silences or redirects them with the standard ``logging`` API; the command line shows the same
records as ``transferkit: ...`` lines, and ``-v`` adds the debug records.

The warnings come from ``transferkit.inference`` (``auto`` falling back to Keras while
``transferkit.extract`` builds its network) and from the train job (too few test rows)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from imagefiles import make_folder
from logstate import fresh_logger, no_logging_configured

import transferkit
from transferkit import inference
from transferkit.cli import VERBOSE_ENV, build_cli
from transferkit.store import create_store

FALLBACK = "auto falls back to keras"
FEW_ROWS = "warning: only 4 test rows"
_ROUGH = "; the scores below are rough (more images, or a larger --test-size, make them meaningful)"


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    with fresh_logger() as logger:
        yield logger


@pytest.fixture
def unconvertible(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A backbone with an op no converting runtime has: ``auto`` tries to convert it (at once:
    no time threshold) and falls back to Keras with a warning."""
    import keras
    import tensorflow as tf

    class Igamma(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return tf.math.igamma(x * x + 1.0, x * x + 2.0)

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Igamma()(keras.layers.Conv2D(4, 3)(inputs)))
    monkeypatch.setattr(inference, "AUTO_CONVERT_SECONDS", 0.0)
    monkeypatch.setenv(inference.CACHE_ENV, str(tmp_path / "cache"))
    return transferkit.Backbone(
        name="igamma-net",
        model=model,
        preprocess=lambda x: x / 255.0,
        input_size=(8, 8),
        pooling="avg",
        weights_source="none",
    )


@pytest.fixture
def few_rows(tmp_path: Path) -> Path:
    """A store of 2 x 10 rows: a 20 % test split holds 4 rows, and train warns about it."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    X = (rng.normal(size=(20, 6)) + y[:, None]).astype(np.float32)
    recipe = {"backbone": "tiny", "weights": "none", "pooling": "avg", "input_size": [8, 8]}
    path = tmp_path / "few.h5"
    with create_store(path, feature_dim=6, label_names=["a", "b"], metadata=recipe) as writer:
        writer.append(X, y, [f"img/{i}.png" for i in range(20)])
    return path


def _extract(images: Path, backbone: Any, out: Path) -> None:
    result = transferkit.extract(images, backbone=backbone, out=out, runtime="auto", progress=False)
    assert result["runtime"] == "keras"


def test_a_program_sees_extracts_warning_and_silences_it_with_logging(
    logger: logging.Logger, unconvertible: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_folder(tmp_path / "images", per_class=2, size=16)
    # nothing configured: a ``transferkit.*`` WARNING record, on stderr through the last resort
    with no_logging_configured() as reached:
        _extract(tmp_path / "images", unconvertible, tmp_path / "a.h5")
    err = [line for line in capsys.readouterr().err.splitlines() if FALLBACK in line]
    assert len(err) == 1 and "igamma-net" in err[0]
    assert not err[0].startswith("transferkit:")  # the prefix is the command line's
    ours = [r for r in reached if r.name.startswith("transferkit")]
    assert [(r.name, r.levelno, r.getMessage()) for r in ours] == [
        ("transferkit.inference", logging.WARNING, err[0])
    ]
    # silenced with the standard API: nothing on stderr
    logger.setLevel(logging.ERROR)
    with no_logging_configured() as reached:
        _extract(tmp_path / "images", unconvertible, tmp_path / "b.h5")
    assert FALLBACK not in capsys.readouterr().err
    assert not [r for r in reached if r.name.startswith("transferkit")]


def test_a_null_handler_without_propagation_silences_a_job(
    logger: logging.Logger, few_rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with no_logging_configured() as reached:
        transferkit.train(few_rows, classifier="logistic-regression")
    assert capsys.readouterr().err.splitlines() == [FEW_ROWS + _ROUGH]  # no INFO lines
    assert [(r.name, r.levelno) for r in reached] == [("transferkit.jobs.train", logging.WARNING)]
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    with no_logging_configured() as reached:
        transferkit.train(few_rows, classifier="logistic-regression")
    assert capsys.readouterr().err == "" and not reached


def test_the_command_line_shows_warnings_with_its_prefix_and_debug_with_v(
    logger: logging.Logger, few_rows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VERBOSE_ENV, "0")  # -v sets it to 1; put back after the test
    args = ["train", str(few_rows), "--classifier", "logistic-regression"]
    plain = CliRunner().invoke(build_cli(), args)
    assert plain.exit_code == 0, plain.output
    lines = plain.stderr.splitlines()
    assert f"transferkit: {FEW_ROWS}{_ROUGH}" in lines
    assert "training logistic-regression on 16 rows, testing on 4 (6 features, 2 classes)" in lines
    assert not [line for line in lines if line.startswith("estimator:")]

    verbose = CliRunner().invoke(build_cli(), ["-v", *args])
    assert verbose.exit_code == 0, verbose.output
    lines = verbose.stderr.splitlines()
    assert f"transferkit: {FEW_ROWS}{_ROUGH}" in lines
    debug = [line for line in lines if line.startswith("estimator: ")]
    assert len(debug) == 1 and "LogisticRegression(max_iter=1000, random_state=0)" in debug[0]
