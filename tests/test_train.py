"""``transferkit train`` and saved models, on the digits written into real HDF5 and Zarr stores."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_digits

from transferkit import api
from transferkit.cli import build_cli
from transferkit.errors import TransferkitError, UsageError
from transferkit.models import load_model, save_model
from transferkit.store import create_store

DIGIT_NAMES = [f"digit-{i}" for i in range(10)]
RECIPE = {
    "backbone": "efficientnet-lite0",
    "weights": "default",
    "pooling": "avg",
    "input_size": [64, 64],
}


def write_digits(
    path: Path, rows: int | None = None, metadata: dict[str, Any] | None = None
) -> Path:
    """The digits' 64 pixels as features in a real store (any registered suffix)."""
    X, y = load_digits(return_X_y=True)
    if rows is not None:
        X, y = X[:rows], y[:rows]
    with create_store(
        path, feature_dim=64, label_names=DIGIT_NAMES, metadata=metadata or RECIPE
    ) as writer:
        for start in range(0, len(X), 500):
            writer.append(
                X[start : start + 500].astype(np.float32),
                y[start : start + 500],
                [f"img/{i}.png" for i in range(start, min(start + 500, len(X)))],
            )
    return path


@pytest.fixture(scope="module")
def digits_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("stores") / "digits.h5")


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_logistic_regression_learns_digits_from_both_formats(tmp_path: Path, suffix: str) -> None:
    store = write_digits(tmp_path / f"digits{suffix}")
    result = api.train(store, classifier="logistic-regression", out=tmp_path / "model")
    assert result["accuracy"] > 0.93
    assert result["macro_f1"] > 0.93
    assert result["n_train"] + result["n_test"] == 1797 and result["n_test"] in (359, 360)
    assert "digit-7" in result["report_text"]
    assert result["per_class"]["digit-3"]["support"] in (36, 37)  # stratified: 20% of 183
    assert result["fit_seconds"] > 0
    saved = load_model(result["model_path"])
    assert result["model_path"].endswith(".skops")
    assert saved.recipe.backbone == "efficientnet-lite0"
    assert saved.recipe.input_size == (64, 64)
    assert saved.label_names == DIGIT_NAMES
    X, y = load_digits(return_X_y=True)
    assert np.mean(saved.estimator.predict(X.astype(np.float32)) == y) > 0.95


def test_split_is_seeded_and_subset_is_stratified(digits_h5: Path) -> None:
    a = api.train(digits_h5, classifier="knn-3", seed=1)
    b = api.train(digits_h5, classifier="knn-3", seed=1)
    assert a["accuracy"] == b["accuracy"] and a["accuracy"] > 0.95
    small = api.train(digits_h5, classifier="knn-3", subset=0.25, test_size=0.5)
    assert 430 <= small["n_train"] + small["n_test"] <= 460
    assert {v["support"] for k, v in small["per_class"].items() if k.startswith("digit")} <= {
        22,
        23,
        24,
    }


def test_river_model_is_a_pickle_refused_without_trust(digits_h5: Path, tmp_path: Path) -> None:
    result = api.train(digits_h5, classifier="river-logreg", out=tmp_path / "river")
    assert result["accuracy"] > 0.85
    path = Path(result["model_path"])
    assert path.suffix == ".pkl"
    with pytest.raises(TransferkitError, match="--trust"):
        load_model(path)
    saved = load_model(path, trust=True)
    assert saved.library == "river" and saved.label_names == DIGIT_NAMES


def test_a_doctored_pickle_never_runs_without_trust(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self) -> Any:
            return (marker.mkdir, ())

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"header": "{}", "estimator": Evil()}))
    with pytest.raises(TransferkitError, match="pickle"):
        load_model(path)
    assert not marker.exists()
    with pytest.raises(TransferkitError, match="not a transferkit model"):
        load_model(path, trust=True)  # no model header: never unpickled, even when trusted
    assert not marker.exists()


def test_skops_refuses_foreign_types(digits_h5: Path, tmp_path: Path) -> None:
    from sklearn.preprocessing import FunctionTransformer

    from transferkit.models import FeatureRecipe, SavedModel

    model = SavedModel(
        estimator=FunctionTransformer(np.load),  # a function reference inside the file
        recipe=FeatureRecipe("tiny"),
        label_names=["a"],
        classifier="custom",
        library="scikit-learn",
    )
    path = save_model(model, tmp_path / "odd.skops")
    with pytest.raises(TransferkitError, match="numpy.load"):
        load_model(path)
    assert load_model(path, trust=True).estimator.func is np.load


def test_cli_train_json_and_errors(digits_h5: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        build_cli(),
        [
            "train",
            str(digits_h5),
            "--classifier",
            "ridge-1",
            "--json",
            "--out",
            str(tmp_path / "m.skops"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["accuracy"] > 0.9 and Path(data["model_path"]).exists()
    text = runner.invoke(build_cli(), ["train", str(digits_h5), "-c", "knn-5"])
    assert text.exit_code == 0 and "digit-9" in text.stdout and "accuracy" in text.stdout
    bad = runner.invoke(build_cli(), ["train", str(digits_h5), "-c", "logistic-regresion"])
    assert bad.exit_code == 2 and "Did you mean" in bad.output
    missing = runner.invoke(build_cli(), ["train", str(tmp_path / "none.h5"), "-c", "knn-5"])
    assert missing.exit_code == 2 and "transferkit extract" in missing.output
    with pytest.raises(UsageError):
        api.train(digits_h5, classifier="knn-5", test_size=1.5)


def test_a_classic_h5py_store_trains_but_cannot_predict_images(tmp_path: Path) -> None:
    import h5py

    X, y = load_digits(return_X_y=True)
    path = tmp_path / "classic.h5"
    with h5py.File(path, "w") as f:  # what the classic Keras features recipe writes
        f.create_dataset("features", data=X.astype(np.float32))
        f.create_dataset("labels", data=y)
        f.create_dataset("label_names", data=np.array([str(i) for i in range(10)], dtype="S"))
    result = api.train(path, classifier="logistic-regression", out=tmp_path / "m")
    assert result["accuracy"] > 0.93 and "9" in result["per_class"]
    with pytest.raises(UsageError, match="did not record which backbone"):
        api.predict(result["model_path"], [str(path)])
