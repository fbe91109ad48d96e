"""``seed_everything``: one call that makes a CPU run repeatable."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int = 0, *, deterministic: bool = False) -> int:
    """Seed Python, NumPy, TensorFlow and Keras (``keras.utils.set_random_seed``).

    With ``deterministic=True`` TensorFlow's op determinism is switched on as well (it stays on for
    the rest of the process; on a GPU some ops then raise instead of running non-deterministically).
    Returns the seed.
    """
    import keras

    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    keras.utils.set_random_seed(seed)
    if deterministic:
        deterministic_ops()
    return seed


def deterministic_ops() -> None:
    """Switch TensorFlow's op determinism on (for the rest of the process)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
