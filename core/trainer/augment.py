"""Augmentation presets built from Keras 3 preprocessing layers (``ImageDataGenerator`` is gone).

The ``classic`` preset equals the classic fine-tuning recipe's generator settings::

    ImageDataGenerator(rotation_range=30, horizontal_flip=True, width_shift_range=0.1,
                       height_shift_range=0.1, shear_range=0.2, zoom_range=0.2,
                       fill_mode="nearest")

Keras' ``RandomRotation`` takes a fraction of a full turn, so 30 degrees is ``30 / 360``. The
generator's ``shear_range=0.2`` was, strictly, an angle in degrees (a barely visible shear); the
preset takes the recipe's intent, a shear factor of 0.2 (``RandomShear(0.2, 0.2)``). Zoom draws
height and width factors independently in [0.8, 1.2], as the generator did. The layers
only change their input when called with ``training=True``: inside the Trainer they sit at the front
of the training model, so validation, test and prediction batches pass through unchanged.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError

PRESETS = ("classic", "light", "flip", "none")


def augmentation(preset: str | None = "classic", *, seed: int | None = None) -> Any:
    """A ``keras.Sequential`` of random layers for ``preset``, or ``None`` for ``"none"``."""
    import keras

    if preset is None or preset == "none":
        return None
    layers = keras.layers
    seeds = iter([None] * 5 if seed is None else [int(seed) * 7 + i for i in range(5)])
    if preset == "classic":
        return keras.Sequential(
            [
                layers.RandomRotation(30 / 360, fill_mode="nearest", seed=next(seeds)),
                layers.RandomFlip("horizontal", seed=next(seeds)),
                layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=next(seeds)),
                layers.RandomShear(0.2, 0.2, fill_mode="nearest", seed=next(seeds)),
                layers.RandomZoom(0.2, 0.2, fill_mode="nearest", seed=next(seeds)),
            ],
            name="augment_classic",
        )
    if preset == "light":
        # random crops: a zoom in of up to 20 % (the missing border never shows: zooming in
        # only) at a random place, and horizontal flips
        return keras.Sequential(
            [
                layers.RandomFlip("horizontal", seed=next(seeds)),
                layers.RandomZoom((-0.2, 0.0), fill_mode="reflect", seed=next(seeds)),
                layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=next(seeds)),
            ],
            name="augment_light",
        )
    if preset == "flip":
        return keras.Sequential(
            [layers.RandomFlip("horizontal", seed=next(seeds))], name="augment_flip"
        )
    raise UsageError(f"unknown augmentation preset {preset!r}; use one of {list(PRESETS)}")
