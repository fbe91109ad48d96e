"""A tiny real Keras CNN registered as backbone ``tiny-cnn``, for fast extraction tests.

Its weights come from seeded initialisers, so every process builds the same network (the
resume test compares a killed-and-resumed run with an uninterrupted one). Register the module
itself as a plugin: ``register_plugin(tiny_backbone, "tiny-backbone")``.
"""

from __future__ import annotations

from typing import Any

from transferkit import Backbone, BackboneSpec, hookimpl

NAME = "tiny-cnn"
SIZE = 32


def preprocess(x: Any) -> Any:
    return x / 127.5 - 1.0


def build(weights: Any = "default", input_size: Any = None) -> Backbone:
    import keras

    h, w = (SIZE, SIZE) if input_size is None else tuple(input_size)
    init = keras.initializers.GlorotUniform(seed=7)
    inputs = keras.Input((h, w, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", kernel_initializer=init)(inputs)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", kernel_initializer=init)(x)
    return Backbone(
        name=NAME,
        model=keras.Model(inputs, x, name="tiny_cnn"),
        preprocess=preprocess,
        input_size=(h, w),
        weights_source="random initialisation (seeded)",
        preprocessing="x / 127.5 - 1",
    )


@hookimpl
def register_backbones(register: Any) -> None:
    register(
        BackboneSpec(
            name=NAME,
            description="two conv layers, for tests",
            factory=build,
            input_size=(SIZE, SIZE),
            feature_map=(8, 8, 8),
        )
    )
