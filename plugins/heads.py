"""Built-in classification heads for fine-tuning."""

from __future__ import annotations

from typing import Any

from transferkit import HeadSpec, hookimpl


def classic_head(num_classes: int, units: int = 256, dropout: float = 0.5) -> Any:
    """Flatten, Dense(units), ReLU, BatchNorm, Dropout, Dense(classes), Softmax: the classic
    fine-tuning recipe's head, to put on an unpooled convolutional base."""
    import keras

    return keras.Sequential(
        [
            keras.layers.Flatten(),
            keras.layers.Dense(units),
            keras.layers.Activation("relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(num_classes),
            keras.layers.Activation("softmax", dtype="float32"),
        ],
        name="classic_head",
    )


def linear_head(num_classes: int, dropout: float = 0.2) -> Any:
    """Global average pooling (when the input is a feature map), Dropout, Dense + Softmax."""
    import keras

    from transferkit.plugin import PoolIfMap

    return keras.Sequential(
        [
            PoolIfMap(),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="linear_head",
    )


def dense_head(num_classes: int) -> Any:
    """Dense + Softmax on a feature vector: the classic TF Hub feature-vector recipe's head
    (a feature map is average-pooled first)."""
    import keras

    from transferkit.plugin import PoolIfMap

    return keras.Sequential(
        [PoolIfMap(), keras.layers.Dense(num_classes, activation="softmax", dtype="float32")],
        name="dense_head",
    )


@hookimpl
def register_heads(register: Any) -> None:
    register(
        HeadSpec(
            name="classic",
            description="Flatten, Dense 256, ReLU, BatchNorm, Dropout 0.5, Dense, Softmax",
            factory=classic_head,
            # on the unpooled feature map, with the classic recipe's schedule
            metadata={"pooling": "none", "schedule": "classic"},
        )
    )
    register(
        HeadSpec(
            name="linear",
            description="Global average pooling, Dropout 0.2, Dense + Softmax",
            factory=linear_head,
            metadata={"pooling": "none"},  # it pools the feature map itself
        )
    )
    register(
        HeadSpec(
            name="dense",
            description="Dense + Softmax (the TF Hub feature-vector recipe)",
            factory=dense_head,
        )
    )
