"""Serializable Keras layers of fine-tuned models.

Every layer here is registered with ``keras.saving.register_keras_serializable`` and implements
``get_config``, so a saved ``.keras`` file reloads once this module is imported (``load_finetuned``
does that). Importing this module imports Keras.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "transferkit"

# name -> (scale, offset per channel, bgr): x' = (x[..., order] * scale) - offset, then / std
_MEANS_CAFFE = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("caffe", "tf", "torch", "unit", "none", "affine")


def preprocess_mode(preprocessing: str) -> str | None:
    """The :class:`ImagePreprocessing` mode for a backbone's ``preprocessing`` description, or
    ``None`` when it is not one of the standard ones."""
    text = (preprocessing or "").strip().lower()
    if text in PREPROCESS_MODES:
        return text
    if not text or text in ("raw", "identity", "included", "in-model", "0..255"):
        return "none" if text else None
    for mode in ("caffe", "torch"):
        if mode in text:
            return mode
    if text.startswith("tf") or "[-1, 1]" in text or "-1..1" in text or "127.5" in text:
        return "tf"
    if "[0, 1]" in text or "0..1" in text or "/255" in text or "rescale" in text:
        return "unit"
    if "none" in text or "in the model" in text or "included" in text:
        return "none"
    return None


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImagePreprocessing(keras.layers.Layer):
    """Maps float RGB 0..255 images to a backbone's input with one of the standard modes:
    ``caffe`` (BGR, ImageNet means subtracted), ``tf`` (-1..1), ``torch`` (0..1, ImageNet mean and
    std), ``unit`` (0..1), ``none`` (unchanged; the network rescales itself) or ``affine``
    (``x * scale + offset`` per channel, e.g. ``(x - 127) / 128``)."""

    def __init__(
        self,
        mode: str = "none",
        scale: Any = (1.0, 1.0, 1.0),
        offset: Any = (0.0, 0.0, 0.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; use one of {PREPROCESS_MODES}")
        self.mode = mode
        self.scale = [float(v) for v in scale]
        self.offset = [float(v) for v in offset]

    def call(self, x: Any) -> Any:
        x = ops.cast(x, "float32")
        if self.mode == "affine":
            scale = ops.convert_to_tensor(self.scale, dtype="float32")
            return x * scale + ops.convert_to_tensor(self.offset, dtype="float32")
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_MEANS_CAFFE, dtype="float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype="float32")
            std = ops.convert_to_tensor(_TORCH_STD, dtype="float32")
            return (x / 255.0 - mean) / std
        if self.mode == "unit":
            return x / 255.0
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "mode": self.mode,
            "scale": list(self.scale),
            "offset": list(self.offset),
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class GradientScale(keras.layers.Layer):
    """Identity forward; multiplies the gradient flowing back through it by ``multiplier``.

    Placed between the base and the head, it gives the base a learning rate of
    ``multiplier * lr`` under SGD (with or without momentum): the ``gradual`` strategy's lower
    learning rate for the base. The multiplier is a non-trainable variable, so changing it needs no
    re-compile. (Adaptive optimizers such as Adam or RMSprop are scale invariant and ignore it.)
    """

    def __init__(self, multiplier: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initial_multiplier = float(multiplier)

    def build(self, input_shape: Any) -> None:
        self.multiplier = self.add_weight(
            name="multiplier",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_multiplier),
            trainable=False,
        )

    def call(self, x: Any) -> Any:
        m = ops.cast(self.multiplier, x.dtype)
        return m * x + ops.stop_gradient((1.0 - m) * x)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "multiplier": self.initial_multiplier}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassLabels(keras.layers.Layer):
    """Identity layer at the end of an exported classifier that carries its metadata: the class
    label names, the backbone it was fine-tuned from, its input size and preprocessing."""

    def __init__(
        self,
        label_names: list[str] | tuple[str, ...] = (),
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.label_names = [str(n) for n in label_names]
        self.metadata = dict(metadata or {})

    def call(self, x: Any) -> Any:
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "label_names": list(self.label_names),
            "metadata": dict(self.metadata),
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PoolIfMap(keras.layers.Layer):
    """Global average pooling of a feature map (N, h, w, C); a feature vector passes unchanged.
    Lets one head fit both pooled and unpooled backbones."""

    def call(self, x: Any) -> Any:
        if len(x.shape) == 4:
            return ops.mean(x, axis=(1, 2))
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        if len(input_shape) == 4:
            return (input_shape[0], input_shape[3])
        return input_shape


def _affine_form(args: dict[str, Any]) -> tuple[Any, Any] | None:
    """``ImagePreprocessing(**args)`` as ``x @ matrix + bias`` (3x3, 3), None for ``none``."""
    import numpy as np

    mode = args.get("mode", "none")
    if mode == "none":
        return None
    eye = np.eye(3, dtype="float64")
    if mode == "unit":
        return eye / 255.0, np.zeros(3)
    if mode == "tf":
        return eye / 127.5, -np.ones(3)
    if mode == "caffe":
        return eye[::-1].copy(), -np.asarray(_MEANS_CAFFE)
    if mode == "torch":
        std = np.asarray(_TORCH_STD)
        return np.diag(1.0 / (255.0 * std)), -np.asarray(_TORCH_MEAN) / std
    return np.diag(np.asarray(args["scale"], dtype="float64")), np.asarray(args["offset"])


def standard_preprocessing(args: dict[str, Any], inputs: Any) -> Any:
    """Apply ``ImagePreprocessing(**args)`` to ``inputs`` built from standard Keras layers only, so
    that a saved model loads with plain Keras: ``Rescaling(scale, offset)`` where every channel is
    treated the same (``tf``, ``unit``, ``(x - 127) / 128``), otherwise a frozen ``Dense(3)`` on the
    channel axis whose kernel is the per-channel scale (and, for ``caffe``, the RGB-to-BGR swap)."""
    import numpy as np

    form = _affine_form(args)
    if form is None:
        return inputs
    matrix, bias = form
    diagonal = np.allclose(matrix, np.diag(np.diag(matrix)))
    scales = np.diag(matrix)
    if diagonal and np.allclose(scales, scales[0]) and np.allclose(bias, bias[0]):
        layer = keras.layers.Rescaling(
            float(scales[0]), offset=float(bias[0]), name="preprocess", dtype="float32"
        )
        return layer(inputs)
    dense = keras.layers.Dense(3, trainable=False, name="preprocess", dtype="float32")
    outputs = dense(inputs)
    dense.set_weights([matrix.astype("float32"), np.asarray(bias, dtype="float32")])
    return outputs
