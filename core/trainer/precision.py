"""The training precision: Keras' global dtype policy for the model the Trainer fits.

``--precision`` of ``finetune`` (and ``Trainer(precision=...)``) takes Lightning's names:
``32``, ``16-mixed`` and ``bf16-mixed`` (Keras' own policy names are accepted too). This is not the
precision of extracted features (``32`` or ``bf16`` for ``extract``, a part of the feature
recipe, ``transferkit.recipe``): the two are different vocabularies for different flags.

Keras is imported on use, so importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import UsageError

# a training precision (Lightning's name, or Keras' policy name) -> Keras' dtype policy
TRAINING_PRECISIONS = {"32": "float32", "float32": "float32", "16-mixed": "mixed_float16",
                       "mixed_float16": "mixed_float16", "bf16-mixed": "mixed_bfloat16",
                       "mixed_bfloat16": "mixed_bfloat16"}  # fmt: skip


def policy_name(precision: str) -> str:
    """The Keras dtype policy of a training precision; :class:`UsageError` for an unknown one."""
    if str(precision) not in TRAINING_PRECISIONS:
        raise UsageError(
            f"unknown precision {precision!r}; use one of {sorted(TRAINING_PRECISIONS)}"
        )
    return TRAINING_PRECISIONS[str(precision)]


def set_precision(precision: str) -> str:
    """Set Keras' global dtype policy (before the model is built); returns the policy name."""
    import keras

    policy = policy_name(precision)
    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[str]:
    """Set Keras' global dtype policy for ``precision`` inside the block, then restore it."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    try:
        yield set_precision(precision)
    finally:
        keras.mixed_precision.set_global_policy(previous)
