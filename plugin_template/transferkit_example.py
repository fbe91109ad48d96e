"""An example transferkit plugin: one backbone and one classifier.

Copy this package, rename it, and change what the two hooks register. transferkit finds it through
the ``transferkit`` entry point declared in ``pyproject.toml``.
"""

from __future__ import annotations

from typing import Any

from transferkit import Backbone, BackboneSpec, ClassifierSpec, hookimpl

__version__ = "0.1.0"

INPUT_SIZE = (64, 64)
WIDTH = 32  # channels of the last convolution


def build_example_cnn(weights: Any = "default", input_size: Any = None) -> Backbone:
    """A small convolutional network built in code, up to its last feature map: transferkit
    pools the map itself (avg, max or flatten), or hands it to a fine-tuning head.

    ``weights`` comes normalised: ``"default"`` or None start from a seeded random
    initialisation; a path loads a Keras ``.weights.h5`` file saved from this network.
    ``input_size`` is ``(height, width)`` or None (the default).
    """
    import keras

    height, width = tuple(input_size or INPUT_SIZE)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((height, width, 3))
    x = inputs
    for filters in (16, 32, WIDTH):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    model = keras.Model(inputs, x, name="example_cnn")
    source = "random (seed 0)"
    if weights not in ("default", None):
        model.load_weights(str(weights))
        source = str(weights)
    return Backbone(
        name="example-cnn",
        model=model,
        preprocess=lambda images: images / 255.0,
        input_size=(height, width),
        weights_source=source,
        preprocessing="x / 255",
    )


def build_centroid_classifier(**params: Any) -> Any:
    """A scikit-learn estimator (anything with fit/predict works)."""
    from sklearn.neighbors import NearestCentroid

    return NearestCentroid(**params)


@hookimpl
def register_backbones(register: Any) -> None:
    register(
        BackboneSpec(
            name="example-cnn",
            description="A three-layer CNN built in code (example plugin)",
            factory=build_example_cnn,
            input_size=INPUT_SIZE,
            preprocessing="x / 255",
            # the last feature map at the default input size (three stride-2 convolutions)
            feature_map=(INPUT_SIZE[0] // 8, INPUT_SIZE[1] // 8, WIDTH),
            weights="random (seed 0) or a local .weights.h5 file",
        )
    )


@hookimpl
def register_classifiers(register: Any) -> None:
    register(
        ClassifierSpec(
            name="example-centroid",
            description="Nearest centroid (example plugin)",
            factory=build_centroid_classifier,
            groups=("example",),
        )
    )
