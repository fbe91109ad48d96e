"""Users' own objects: a Keras model or a ``transferkit.Backbone`` as ``backbone=``, a scikit-learn
estimator as ``classifier=``, ``--param KEY=VALUE`` on named classifiers, Keras callbacks in
``finetune``; on real image files, real stores and real Keras models."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.linear_model import LogisticRegression, SGDClassifier

import transferkit
from transferkit.cli import build_cli
from transferkit.errors import UsageError
from transferkit.models import load_model


def image_folder(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 100, (16, 16, 3)) + 150 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def keras_model(name: str = "my_cnn") -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Conv2D(6, 3, activation="relu"),
        ],
        name=name,
    )


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_train import write_digits

    return write_digits(tmp_path_factory.mktemp("own") / "digits.h5", rows=600)


def test_extract_with_a_keras_model_and_a_backbone(tmp_path: Path) -> None:
    from trainer_helpers import tiny_backbone

    images = image_folder(tmp_path / "images")
    result = transferkit.extract(
        images, backbone=keras_model(), out=tmp_path / "a.h5", pooling="max", progress=False
    )
    assert result["rows"] == 16 and result["feature_dim"] == 6 and result["backbone"] == "my_cnn"
    flat = transferkit.extract(
        images, backbone=keras_model(), out=tmp_path / "f.h5", pooling="flatten", progress=False
    )
    assert flat["feature_dim"] == 12 * 12 * 6
    own = transferkit.extract(
        images, backbone=tiny_backbone(), out=tmp_path / "b.zarr", progress=False
    )
    assert own["rows"] == 16 and own["feature_dim"] == 16 and own["backbone"] == "tiny"
    with pytest.raises(UsageError, match="a transferkit.Backbone or a Keras model"):
        transferkit.extract(images, backbone=object(), out=tmp_path / "c.h5")


def test_train_and_stream_with_an_estimator_of_ones_own(digits_store: Path, tmp_path: Path) -> None:
    mine = LogisticRegression(C=0.5, max_iter=500)
    result = transferkit.train(digits_store, classifier=mine, out=tmp_path / "m.skops")
    assert result["classifier"] == "LogisticRegression(C=0.5, max_iter=500)"
    assert result["accuracy"] > 0.85 and result["library"] == "scikit-learn"
    assert not hasattr(mine, "coef_")  # the caller's object is cloned, never fitted
    saved = load_model(tmp_path / "m.skops")
    assert saved.estimator.C == 0.5 and saved.label_names[0] == "digit-0"

    streamed = transferkit.stream(
        digits_store, classifier=SGDClassifier(random_state=0), batch_size=64, progress=False
    )
    assert streamed["classifier"] == "SGDClassifier(random_state=0)"
    assert streamed["accuracy"] > 0.7
    with pytest.raises(UsageError, match="cannot learn incrementally"):
        transferkit.stream(digits_store, classifier=mine, progress=False)


def test_named_classifier_parameters_are_checked_against_get_params(
    digits_store: Path, tmp_path: Path
) -> None:
    cli = build_cli()
    runner = CliRunner()
    out = tmp_path / "c.skops"
    result = runner.invoke(
        cli, ["train", str(digits_store), "-c", "logistic-regression", "--param", "C=0.01",
              "-p", "max_iter=50", "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    params = load_model(out).estimator.get_params()
    values = {k.rsplit("__", 1)[-1]: v for k, v in params.items() if k.endswith(("C", "max_iter"))}
    assert values == {"C": 0.01, "max_iter": 50}  # typed: a float and an int
    bad = runner.invoke(cli, ["train", str(digits_store), "-c", "logistic-regression",
                              "--param", "max_itr=5"])  # fmt: skip
    assert bad.exit_code == 2
    assert "no parameter 'max_itr'" in bad.stderr and "did you mean" in bad.stderr
    malformed = runner.invoke(cli, ["train", str(digits_store), "-c", "ridge-1", "-p", "alpha"])
    assert malformed.exit_code == 2 and "KEY=VALUE" in malformed.stderr
    # a stream classifier takes them too
    streamed = transferkit.stream(
        digits_store, classifier="sgd", params={"alpha": 0.5}, out=tmp_path / "s.skops",
        progress=False,
    )  # fmt: skip
    assert streamed["n_train"] > 0
    found = load_model(tmp_path / "s.skops").estimator.get_params()
    assert [v for k, v in found.items() if k.endswith("alpha")] == [0.5]


def test_spotcheck_with_own_estimators_and_a_keras_backbone(tmp_path: Path) -> None:
    images = image_folder(tmp_path / "images", per_class=10)
    kwargs: dict[str, Any] = dict(
        backbones=[keras_model("cnn_a")],
        classifiers=[LogisticRegression(max_iter=300), "ridge-1"],
        cache_dir=tmp_path / "cache", jobs=1, progress=False,
    )  # fmt: skip
    report = transferkit.spotcheck(str(images), **kwargs)
    rows = {r["classifier"]: r for r in report["rows"]}
    assert set(rows) == {"LogisticRegression(max_iter=300)", "ridge-1"}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["LogisticRegression(max_iter=300)"]["backbone"] == "cnn_a"
    assert report["features"][0]["extracted"] is True
    # the same model again: its features come from the cache; other weights: extracted anew
    again = transferkit.spotcheck(str(images), **kwargs)
    assert again["features"][0]["extracted"] is False
    changed = keras_model("cnn_a")
    changed.layers[-1].kernel.assign(changed.layers[-1].kernel * 2.0)
    third = transferkit.spotcheck(str(images), **{**kwargs, "backbones": [changed]})
    assert third["features"][0]["extracted"] is True


def test_finetune_with_a_keras_model_and_keras_callbacks(tmp_path: Path) -> None:
    import keras

    log = tmp_path / "keras-log.csv"
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None  # an optional extra
    result = transferkit.finetune(
        image_folder(tmp_path / "images"), backbone=keras_model(), out=tmp_path / "run",
        strategy="head-only", epochs=[6], batch_size=8, progress=False,
        callbacks=[keras.callbacks.CSVLogger(str(log)),
                   keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=100.0)],
        tensorboard=tmp_path / "tb" if has_tensorboard else None,
    )  # fmt: skip
    # Keras' EarlyStopping ended the phase after the second epoch, as transferkit's would
    assert result["epochs"] == 2 and result["phases"][0]["epochs"] == 2
    with open(log) as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["0", "1"]
    if has_tensorboard:
        assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["backbone"] == "my_cnn"
    loaded = transferkit.load_finetuned(tmp_path / "run")
    assert loaded.label_names == ["dark", "light"]
    with pytest.raises(UsageError, match="neither a transferkit.trainer.Callback nor a Keras"):
        transferkit.finetune(
            tmp_path / "images", backbone=keras_model(), out=tmp_path / "r2", callbacks=[object()]
        )


def test_a_plugins_keras_class_reloads_through_register_keras_objects(
    tmp_path: Path, register_plugin: Any
) -> None:
    """A head plugin's own Keras layer: saved in the model, found again on loading through the
    plugin's ``register_keras_objects`` (not by the host probing the plugin's attributes)."""
    import keras

    from transferkit import HeadSpec, TransferkitError, hookimpl

    class Halve(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x * 0.5

    name = "tkhooktest>Halve"
    keras.saving.register_keras_serializable(package="tkhooktest", name="Halve")(Halve)

    def halved_head(num_classes: int) -> Any:
        return keras.Sequential(
            [Halve(), keras.layers.Dense(num_classes, activation="softmax")], name="halved"
        )

    made: list[str] = []

    def make_halve() -> Any:
        made.append(name)
        return Halve

    class Heads:
        @hookimpl
        def register_heads(self, register: Any) -> None:
            register(HeadSpec(name="halved", description="test", factory=halved_head))

    class LazyObjects:  # defined only when a model names it
        @hookimpl
        def register_keras_objects(self, register: Any) -> None:
            register(make_halve, name=name)

    class Objects:
        @hookimpl
        def register_keras_objects(self, register: Any) -> None:
            register(Halve)  # known under its registered name

    register_plugin(Heads(), "halved-head")
    transferkit.finetune(
        image_folder(tmp_path / "images", per_class=4), backbone=keras_model(),
        out=tmp_path / "run", head="halved", strategy="head-only", epochs=[1], batch_size=8,
        progress=False,
    )  # fmt: skip
    # as in a new process: the class is not known to Keras until a plugin registers it
    keras.saving.get_custom_objects().pop(name)
    try:
        with pytest.raises(TransferkitError, match="cannot load"):
            transferkit.load_finetuned(tmp_path / "run")
        lazy = register_plugin(LazyObjects(), "lazy-objects")
        loaded = transferkit.load_finetuned(tmp_path / "run")
        assert made == [name] and loaded.label_names == ["dark", "light"]
        assert any(isinstance(layer, Halve) for layer in loaded.model._flatten_layers())
        from transferkit import plugin_manager, registry

        plugin_manager.get_plugin_manager().unregister(lazy)
        registry.clear_cache()
        register_plugin(Objects(), "objects")
        assert transferkit.load_finetuned(tmp_path / "run").label_names == ["dark", "light"]
        assert made == [name]  # the class form needs no function
    finally:
        keras.saving.get_custom_objects().pop(name, None)
