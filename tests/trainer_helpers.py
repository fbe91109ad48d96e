"""Small real models and data for the trainer tests: a tiny CNN backbone with block-named layers
and the scikit-learn digits as RGB images."""

from __future__ import annotations

from typing import Any

import numpy as np


def tiny_backbone(
    size: tuple[int, int] = (16, 16), filters: tuple[int, ...] = (8, 16), pooling: str = "avg"
) -> Any:
    import keras

    from transferkit import Backbone

    inputs = keras.Input((*size, 3))
    x = inputs
    for i, f in enumerate(filters, start=1):
        x = keras.layers.Conv2D(f, 3, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    model = keras.Model(inputs, x, name="tiny")
    return Backbone(
        name="tiny",
        model=model,
        preprocess=lambda t: t / 255.0,
        input_size=size,
        pooling="avg" if pooling == "avg" else "none",  # else the feature map
        weights_source="none",
        preprocessing="unit",
    )


def digits(n: int = 400, classes: int = 10) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first ``n`` scikit-learn digits of the first ``classes`` classes, as 8x8 RGB 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < classes
    images = np.repeat(d.images[keep][..., None] * (255.0 / 16.0), 3, axis=-1)[:n]
    return images.astype(np.float32), d.target[keep][:n], [str(i) for i in range(classes)]
