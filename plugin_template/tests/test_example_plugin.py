"""Tests of the example plugin: what it registers, and that its backbone really works."""

from __future__ import annotations

import numpy as np
import pytest
import transferkit_example

import transferkit
from transferkit.plugin import get_plugin_manager, get_spec, reset_plugins


@pytest.fixture
def plugin():
    reset_plugins()  # also forgets what the plugins registered before
    pm = get_plugin_manager()
    if pm.get_plugin("example") is None:  # not installed: register the module by hand
        pm.register(transferkit_example, name="example")
    yield
    reset_plugins()


def test_registered(plugin) -> None:
    spec = get_spec("backbone", "example-cnn")
    assert spec.plugin == "example"
    assert get_spec("classifier", "example-centroid").groups == ("example",)


@pytest.mark.parametrize("pooling", ["avg", "max", "flatten"])
def test_backbone_feature_width_matches_metadata(plugin, pooling: str) -> None:
    spec = get_spec("backbone", "example-cnn")
    backbone = spec.factory()
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    feature_map = np.asarray(backbone.model(backbone.preprocess(images)))
    assert feature_map.shape == (2, *spec.feature_map)
    pooled = transferkit.pool(backbone, pooling)  # what the host does before extracting
    features = np.asarray(pooled.model(backbone.preprocess(images)))
    assert features.shape == (2, spec.feature_dims[pooling]) == (2, pooled.feature_dim)


def test_classifier_fits(plugin) -> None:
    clf = get_spec("classifier", "example-centroid").factory()
    X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    clf.fit(X, [0, 0, 1, 1])
    assert list(clf.predict([[0.05, 0.0], [5.0, 5.1]])) == [0, 1]
