"""TF Hub backbones on SavedModels these tests export: local folder, file:// URL, pre-filled cache,
offline failure, frozen and unfrozen training inside Keras 3, and a .keras round trip."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from transferkit import UsageError, WeightsUnavailableError, pool, registry

FEATURES = 6


@pytest.fixture(scope="module")
def savedmodel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image -> feature vector SavedModel: conv 3x3 (trainable), a fixed non-trainable
    scale (like BatchNorm statistics), global average pooling and a dense projection."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = tf.random.Generator.from_seed(0)
            self.kernel = tf.Variable(rng.normal((3, 3, 3, 4)) * 0.3, name="conv/kernel")
            self.scale = tf.Variable(tf.fill((4,), 1.5), trainable=False, name="bn/scale")
            self.dense = tf.Variable(rng.normal((4, FEATURES)) * 0.5, name="dense/kernel")

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, images: tf.Tensor) -> tf.Tensor:
            x = tf.nn.conv2d(images, self.kernel, strides=1, padding="SAME")
            x = tf.nn.relu(x) * self.scale
            return tf.matmul(tf.reduce_mean(x, axis=(1, 2)), self.dense)

    folder = tmp_path_factory.mktemp("hub") / "tiny_feature_vector"
    tf.saved_model.save(Tiny(), str(folder))
    return folder


@pytest.fixture(scope="module")
def savedmodel_with_training(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel whose __call__ takes ``training`` (as TF Hub models with BatchNorm do): it
    adds 100 to its output in training mode, so the tests can see which mode ran."""
    import tensorflow as tf

    class WithTraining(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = tf.Variable(tf.ones((3, 2)), name="dense/kernel")

        @tf.function
        def __call__(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
            out = tf.matmul(tf.reduce_mean(images, axis=(1, 2)), self.dense)
            return out + 100.0 if training else out

    module = WithTraining()
    spec = tf.TensorSpec([None, 16, 16, 3], tf.float32)
    for training in (False, True):
        module.__call__.get_concrete_function(spec, training=training)
    folder = tmp_path_factory.mktemp("hub") / "with_training"
    tf.saved_model.save(module, str(folder))
    return folder


def test_training_argument_only_when_fine_tuning(savedmodel_with_training: Path) -> None:
    backbone = registry.backbone(f"tfhub:{savedmodel_with_training}").factory()
    layer = backbone.extra["layer"]
    assert layer._accepts_training and backbone.input_size == (16, 16)
    x = np.full((1, 16, 16, 3), 0.5, dtype="float32")
    np.testing.assert_allclose(np.asarray(backbone.model(x, training=False)), [[1.5, 1.5]])
    # Frozen: inference mode even inside a training step (the transfer-learning rule).
    np.testing.assert_allclose(np.asarray(backbone.model(x, training=True)), [[1.5, 1.5]])
    layer.trainable = True
    np.testing.assert_allclose(np.asarray(backbone.model(x, training=True)), [[101.5, 101.5]])


def _images(n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


def _hub_values(backbone) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in backbone.extra["layer"].hub_variables]


def test_local_folder_and_file_url(savedmodel: Path) -> None:
    spec = registry.backbone(f"tfhub:{savedmodel}")
    assert spec.name == f"tfhub:{savedmodel}" and spec.metadata["handle"] == str(savedmodel)
    backbone = spec.factory()
    assert backbone.input_size == (32, 32)  # read from the SavedModel's signature
    assert backbone.feature_dim == FEATURES
    x = backbone.preprocess(_images(2))
    features = np.asarray(backbone.model(x))
    assert features.shape == (2, FEATURES) and np.abs(features).sum() > 0

    by_url = registry.backbone(f"tfhub:{savedmodel.as_uri()}").factory()
    np.testing.assert_allclose(np.asarray(by_url.model(x)), features, rtol=1e-5)
    description = by_url.describe()
    # feature vectors are pooled already (avg): the only pooling this backbone offers
    assert description["feature_dims"] == {"avg": FEATURES} and by_url.poolings == ("avg",)
    assert pool(by_url, "avg").model is by_url.model
    with pytest.raises(UsageError, match="already pooled .avg., so it offers --pooling avg only"):
        pool(by_url, "max")
    assert (
        description["feature_dim"] == FEATURES
        and description["param_count"] == 3 * 3 * 3 * 4 + 4 + 4 * FEATURES
    )

    with pytest.raises(UsageError, match="needs a value after the colon"):
        registry.backbone("tfhub:")
    with pytest.raises(UsageError, match="no SavedModel folder"):
        registry.backbone(f"tfhub:{savedmodel}-missing").factory()


def test_remote_handle_uses_a_prefilled_cache_without_network(
    savedmodel: Path, tmp_path, monkeypatch
) -> None:
    from tensorflow_hub import resolver

    def no_network(self, request):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(resolver.HttpResolverBase, "_call_urlopen", no_network)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    handle = "https://tfhub.example/models/tiny-feature-vector/1"

    with pytest.raises(WeightsUnavailableError) as info:
        registry.backbone(f"tfhub:{handle}").factory()
    message = str(info.value)
    sha = hashlib.sha1(handle.encode()).hexdigest()
    assert "\n" not in message and "file://" in message and sha in message

    shutil.copytree(savedmodel, tmp_path / "cache" / sha)
    backbone = registry.backbone(f"tfhub:{handle}").factory()
    assert backbone.feature_dim == FEATURES and backbone.name == f"tfhub:{handle}"


def _classifier(backbone):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((*backbone.input_size, 3))
    features = backbone.model(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(features)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    return model


def test_frozen_then_unfrozen_training(savedmodel: Path) -> None:
    backbone = registry.backbone(f"tfhub:{savedmodel}").factory()  # frozen by default
    layer = backbone.extra["layer"]
    assert layer.trainable is False and layer.trainable_weights == []
    x = np.asarray(backbone.preprocess(_images(16)))
    y = (x.mean(axis=(1, 2, 3)) > np.median(x.mean(axis=(1, 2, 3)))).astype("int32")

    model = _classifier(backbone)
    before = _hub_values(backbone)
    head_before = model.get_layer("head").get_weights()[0].copy()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for old, new in zip(before, _hub_values(backbone), strict=True):
        np.testing.assert_array_equal(old, new)
    assert not np.allclose(head_before, model.get_layer("head").get_weights()[0])

    features_before = np.asarray(backbone.model(x[:2]))
    layer.trainable = True  # after construction: reaches the wrapped SavedModel variables
    assert len(layer.trainable_weights) == 2  # conv and dense; the fixed scale stays frozen
    model = _classifier(backbone)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = _hub_values(backbone)
    changed = [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    names = [v.name for v in layer.hub_variables]
    assert dict(zip(names, changed, strict=True)) == {
        "bn_scale": False,
        "conv_kernel": True,
        "dense_kernel": True,
    }
    # The Keras variables wrap the SavedModel's own tf.Variables: the restored function sees the
    # trained values, so the backbone's features change too.
    assert not np.allclose(np.asarray(backbone.model(x[:2])), features_before, rtol=1e-4)

    layer.trainable = False
    assert layer.trainable_weights == []


@pytest.mark.process
def test_saved_keras_model_reloads(savedmodel: Path, tmp_path) -> None:
    import keras

    backbone = registry.backbone(f"tfhub:{savedmodel}").factory(trainable=True)
    model = _classifier(backbone)
    x = np.asarray(backbone.preprocess(_images(8, seed=3)))
    model.fit(x, np.arange(8) % 2, epochs=1, batch_size=4, verbose=0)  # move off the originals
    expected = np.asarray(model.predict(x, verbose=0))
    path = tmp_path / "with_hub.keras"
    model.save(path)

    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(reloaded.predict(x, verbose=0)), expected, rtol=1e-5)

    # A fresh process: the layer class is registered by the plugin module on request.
    code = (
        "import sys, numpy as np, keras\n"
        "from transferkit.plugins import tfhub\n"
        "tfhub.keras_objects()\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, m.predict(x, verbose=0))\n"
    )
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=180)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5)


def test_weights_file_round_trip_and_no_random_init(savedmodel: Path, tmp_path) -> None:
    spec = registry.backbone(f"tfhub:{savedmodel}")
    tuned = spec.factory(trainable=True)
    for variable in tuned.extra["layer"].hub_variables:
        variable.assign(variable.numpy() * 0.5)
    path = tmp_path / "tuned.weights.h5"
    tuned.model.save_weights(str(path))
    x = tuned.preprocess(_images(2))
    loaded = spec.factory(weights=str(path))
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.asarray(tuned.model(x)), rtol=1e-5)
    with pytest.raises(UsageError, match="no random initialisation"):
        spec.factory(weights=None)


def test_parametrised_spec_mechanism_is_general(register_plugin) -> None:
    from transferkit import BackboneSpec, hookimpl

    calls = []

    class Family:
        @hookimpl
        def register_backbones(self, register):
            register(
                BackboneSpec(
                    name="echo:",
                    description="test family",
                    factory=lambda weights="default", **kw: calls.append(kw) or kw,
                    metadata={"parameter": "word"},
                )
            )

    register_plugin(Family(), "family")
    spec = registry.backbone("echo:hello:world")
    assert spec.name == "echo:hello:world" and spec.plugin == "family"
    assert spec.factory(pooling="max") == {"word": "hello:world", "pooling": "max"}
    with pytest.raises(UsageError, match="unknown backbone"):
        registry.backbone("nothing:here")
