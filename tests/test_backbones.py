"""keras.applications backbones: metadata without TensorFlow, pooling, preprocessing, weights."""

from __future__ import annotations

import subprocess
import sys
import urllib.error

import numpy as np
import pytest

from transferkit import UsageError, WeightsUnavailableError, pool, registry
from transferkit.plugins import keras_applications as ka

EXPECTED_NAMES = {
    "vgg16", "vgg19", "xception", "resnet50", "resnet101", "resnet152", "resnet50-v2",
    "resnet101-v2", "resnet152-v2", "inception-v3", "inception-resnet-v2", "mobilenet",
    "mobilenet-v2", "mobilenet-v3-small", "mobilenet-v3-large", "densenet121", "densenet169",
    "densenet201", "nasnet-mobile", "nasnet-large", "convnext-tiny", "convnext-small",
    "convnext-base", "convnext-large", "convnext-xlarge", "efficientnet-v2-s",
    "efficientnet-v2-m", "efficientnet-v2-l", "efficientnet-lite0",
    *(f"efficientnet-b{i}" for i in range(8)),
    *(f"efficientnet-v2-b{i}" for i in range(4)),
}  # fmt: skip


def test_every_keras_application_is_listed_with_metadata() -> None:
    import keras

    specs = registry.all_specs("backbone")
    assert set(specs) >= EXPECTED_NAMES
    classes = {n for n in dir(keras.applications) if n[0].isupper()}
    assert {net.cls for net in ka.NETS.values()} == classes  # none forgotten
    for name, net in ka.NETS.items():
        spec = specs[name]
        assert spec.input_size == (net.input_size, net.input_size)
        assert set(spec.feature_dims) == {"avg", "max", "flatten"}
        assert spec.feature_dims["flatten"] % spec.feature_dims["avg"] == 0
        assert spec.metadata["param_count"] > 100_000
        assert "preprocess_input" in spec.preprocessing and spec.weights
    assert specs["vgg16"].feature_dims == {"avg": 512, "max": 512, "flatten": 7 * 7 * 512}
    assert specs["inception-v3"].input_size == (299, 299)


@pytest.mark.process
def test_listing_backbones_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from transferkit import registry\n"
        "specs = registry.all_specs('backbone')\n"
        "assert len(specs) >= 41, len(specs)\n"
        "[s.describe() for s in specs.values()]\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", ["mobilenet-v3-small", "mobilenet-v2", "efficientnet-b0"])
def test_table_matches_the_real_network(name: str) -> None:
    """The generated table against a real build (the script checked all 40 when it wrote it)."""
    spec = registry.backbone(name)
    backbone = pool(spec.factory(weights=None), "flatten")
    assert backbone.input_size == spec.input_size
    assert backbone.feature_dim == spec.feature_dims["flatten"]
    assert backbone.param_count == spec.metadata["param_count"]
    assert backbone.model.outputs[0].shape[1] == spec.feature_dims["flatten"]


def test_poolings_and_layers() -> None:
    spec = registry.backbone("mobilenet-v2")
    images = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    built = {
        p: pool(spec.factory(weights=None, input_size=(96, 96)), p)
        for p in ("avg", "max", "flatten", "none")
    }
    base_layers = [layer.name for layer in built["none"].model.layers]
    assert base_layers[0].startswith("input_layer")
    for pooling, backbone in built.items():
        out = np.asarray(backbone.model(backbone.preprocess(images)))
        if pooling == "none":
            assert out.shape == (2, 3, 3, 1280)
            assert backbone.feature_dim == 3 * 3 * 1280
        else:
            assert out.shape == (2, backbone.feature_dim)
            # The network's own layers in order, then the pooling layer at the end.
            names = [layer.name for layer in backbone.model.layers]
            assert names[1:-1] == base_layers[1:] and len(names) == len(base_layers) + 1
    assert built["avg"].feature_dim == built["max"].feature_dim == 1280
    assert built["flatten"].feature_dim == 3 * 3 * 1280
    description = built["avg"].describe()
    assert description["param_count"] == built["avg"].model.count_params() > 2_000_000
    assert description["weights_source"] == "random initialisation"
    assert description["input_size"] == [96, 96] and description["feature_dim"] == 1280
    # Every pooling's width at this input size, from the feature map's shape.
    assert built["none"].describe()["feature_dims"] == {
        "avg": 1280,
        "max": 1280,
        "flatten": 3 * 3 * 1280,
    }
    assert built["max"].describe()["feature_dims"] == {"max": 1280}
    with pytest.raises(UsageError, match="pooling"):
        pool(built["none"], "mean")
    with pytest.raises(UsageError, match="too small"):
        spec.factory(weights=None, input_size=(8, 8))
    with pytest.raises(UsageError, match="HEIGHTxWIDTH"):
        spec.factory(weights=None, input_size="big")
    assert spec.factory(weights=None, input_size="64x96").input_size == (64, 96)


@pytest.mark.parametrize(
    "name, module",
    [("vgg16", "vgg16"), ("resnet50-v2", "resnet_v2"), ("densenet121", "densenet")],
)
def test_preprocess_is_the_modules_own_and_traceable(name: str, module: str) -> None:
    import keras
    import tensorflow as tf

    net = ka.NETS[name]
    preprocess = ka._make_preprocess(net.module, net.mode)
    images = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    original = images.copy()
    expected = getattr(keras.applications, module).preprocess_input(images.copy())
    np.testing.assert_allclose(np.asarray(preprocess(images)), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(images, original)  # the caller's array is untouched
    dataset = tf.data.Dataset.from_tensor_slices(images).map(preprocess)  # graph mode
    mapped = np.stack(list(dataset.as_numpy_iterator()))
    np.testing.assert_allclose(mapped, expected, rtol=1e-5, atol=1e-4)


def test_in_graph_preprocessing_networks_take_raw_pixels() -> None:
    for name in ("efficientnet-b0", "convnext-tiny", "mobilenet-v3-small", "efficientnet-v2-s"):
        net = ka.NETS[name]
        assert net.mode == "in-graph"
        preprocess = ka._make_preprocess(net.module, net.mode)
        x = np.array([[[[0.0, 128.0, 255.0]]]], dtype="float32")
        np.testing.assert_array_equal(np.asarray(preprocess(x)), x)


def test_imagenet_download_failure_is_one_sentence_with_offline_options(
    tmp_path, monkeypatch
) -> None:
    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    spec = registry.backbone("mobilenet-v3-small")
    with pytest.raises(WeightsUnavailableError) as info:
        spec.factory(weights="default", input_size=(96, 96))
    message = str(info.value)
    assert calls and "\n" not in message and message.count(". ") == 0
    for option in ("--weights none", "--weights PATH", "efficientnet-lite0", "mobilenet-v3-small"):
        assert option in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_local_weights_file_round_trip(tmp_path) -> None:
    spec = registry.backbone("mobilenet-v2")
    first = spec.factory(weights=None, input_size=(64, 64))
    path = tmp_path / "mnv2.weights.h5"
    first.model.save_weights(str(path))
    second = spec.factory(weights=str(path), input_size=(64, 64))
    fresh = spec.factory(weights=None, input_size=(64, 64))
    images = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    x = first.preprocess(images)
    # Random-init activations are tiny: compare relatively, and compare the kernels themselves.
    expected = np.asarray(first.model(x))
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(np.asarray(second.model(x)), expected, rtol=1e-5, atol=0)
    assert not np.allclose(np.asarray(fresh.model(x)), expected, rtol=1e-3, atol=0)
    kernel = first.model.layers[1].name
    np.testing.assert_array_equal(
        second.model.get_layer(kernel).get_weights()[0],
        first.model.get_layer(kernel).get_weights()[0],
    )
    assert second.weights_source == f"file {path}"
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        spec.factory(weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(WeightsUnavailableError, match="cannot load weights file"):
        registry.backbone("mobilenet-v3-small").factory(weights=str(path), input_size=(64, 64))
