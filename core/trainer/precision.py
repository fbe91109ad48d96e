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
from ..specs import TRAINING_PRECISIONS


def policy_name(precision: str) -> str:
    """The Keras dtype policy of a training precision (Lightning's name, or the policy's own);
    :class:`UsageError` for an unknown one."""
    text = str(precision)
    if text in TRAINING_PRECISIONS.values():
        return text
    if text not in TRAINING_PRECISIONS:
        allowed = sorted([*TRAINING_PRECISIONS, *TRAINING_PRECISIONS.values()])
        raise UsageError(f"unknown precision {precision!r}; use one of {allowed}")
    return TRAINING_PRECISIONS[text]


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
