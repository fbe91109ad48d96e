"""``TransferModel``: a backbone and a head, the task the Trainer fits.

The backbone (a :class:`transferkit.Backbone`) turns preprocessed images into features; the head
(a registered :class:`transferkit.HeadSpec`, or any Keras layer) turns features into class
probabilities. Between them sits a :class:`~transferkit.trainer.layers.GradientScale` so that a
strategy can train the base with a lower learning rate than the head.

BatchNorm layers of the base stay in inference mode by default (``train_bn=False``): Keras 3 runs
a ``BatchNormalization`` layer whose ``trainable`` is False in inference mode, and the model keeps
them frozen whatever a strategy unfreezes. (Passing ``training=False`` when calling the base in a
functional model is not enough in Keras 3: the outer model's ``training`` flag overrides it.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..specs import Backbone

LOSS = "sparse_categorical_crossentropy"
METADATA_FILE = "transferkit.json"  # label names and recipe, inside an exported .keras file
METRICS = ("accuracy",)


def iter_layers(layer: Any) -> Iterator[Any]:
    """``layer`` and every layer nested in it (through ``.layers`` of models), depth first."""
    yield layer
    for sub in getattr(layer, "layers", None) or ():
        yield from iter_layers(sub)


def _is_batchnorm(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization) or "BatchNorm" in type(layer).__name__


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.0) -> Any:
    """A Keras optimizer by name (``sgd``, ``rmsprop``, ``adam``, ``adamw``)."""
    import keras

    key = name.lower()
    if key == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    if key == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate)
    if key == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if key == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate)
    raise UsageError(f"unknown optimizer {name!r}; use one of sgd, rmsprop, adam, adamw")


def build_head(head: Any, num_classes: int, **options: Any) -> Any:
    """A head layer: a registered head name, a ``HeadSpec``, or a Keras layer (used as is)."""
    from ..specs import HeadSpec

    if isinstance(head, str):
        from .. import registry

        head = registry.head(head)
    if isinstance(head, HeadSpec):
        try:
            return head.factory(num_classes, **options)
        except TypeError as exc:
            raise UsageError(
                f"head {head.name!r} does not accept options {options}: {exc}"
            ) from exc
    return head


def _apply_portable(head: Any, x: Any) -> Any:
    """Call ``head`` on ``x`` with transferkit's own layers in it swapped for standard Keras ones
    (``PoolIfMap`` -> ``GlobalAveragePooling2D`` or nothing); the weights are the same objects."""
    import keras

    from .layers import PoolIfMap

    if not isinstance(head, keras.Sequential):
        return head(x)
    for layer in head.layers:
        if isinstance(layer, PoolIfMap):
            if len(x.shape) == 4:
                x = keras.layers.GlobalAveragePooling2D(name=f"{head.name}_pool")(x)
            continue
        x = layer(x)
    return x


class TransferModel:
    """A backbone with a classification head.

    ``keras_model`` is the model that is compiled and fitted (augmentation in front when the data
    module asks for it); ``network`` is the same model without augmentation (what is exported).
    """

    def __init__(
        self,
        backbone: Backbone,
        head: Any = "linear",
        *,
        num_classes: int,
        label_names: Sequence[str] | None = None,
        train_bn: bool = False,
        head_options: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        import keras

        from .layers import GradientScale

        if num_classes < 2:
            raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone = backbone
        self.base = backbone.model
        self.num_classes = int(num_classes)
        self.label_names = [
            str(n) for n in (range(num_classes) if label_names is None else label_names)
        ]
        if len(self.label_names) != self.num_classes:
            raise UsageError(
                f"{len(self.label_names)} label names for {self.num_classes} classes; "
                "give one name per class"
            )
        self.train_bn = bool(train_bn)
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise UsageError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.head_name = head if isinstance(head, str) else getattr(head, "name", "custom")
        self.head = build_head(head, self.num_classes, **(head_options or {}))
        h, w = backbone.input_size
        inputs = keras.Input((h, w, 3), name="image")
        features = self.base(inputs)
        self.gradient_scale = GradientScale(1.0, name="base_gradient_scale")
        outputs = self.head(self.gradient_scale(features))
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone.name).strip("_")[:60] or "backbone"
        self.network = keras.Model(inputs, outputs, name=f"{safe}_classifier")
        self.keras_model = self.network
        self.augment: Any = None
        self.compiled_key: Any = None
        self.freeze_base()

    # ------------------------------------------------------------------ structure

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.backbone.input_size)  # type: ignore[return-value]

    @property
    def base_layers(self) -> list[Any]:
        return list(self.base.layers) if hasattr(self.base, "layers") else [self.base]

    def set_augmentation(self, augment: Any) -> None:
        """Put ``augment`` (a Keras layer active only in training) in front of the network."""
        import keras

        if augment is self.augment:
            return
        self.augment = augment
        if augment is None:
            self.keras_model = self.network
        else:
            h, w = self.input_size
            inputs = keras.Input((h, w, 3), name="image")
            self.keras_model = keras.Model(inputs, self.network(augment(inputs)), name="training")
        self.compiled_key = None

    # ------------------------------------------------------------------ trainable state

    def _fix_batchnorm(self) -> None:
        if self.train_bn:
            return
        for layer in iter_layers(self.base):
            if _is_batchnorm(layer):
                layer.trainable = False

    def freeze_base(self) -> None:
        """Freeze the whole base (the head stays trainable)."""
        self.base.trainable = False
        self.head.trainable = True

    def unfreeze_base(self, from_index: int = 0) -> None:
        """Make ``base.layers[from_index:]`` trainable and the layers before it frozen (BatchNorm
        layers stay frozen unless ``train_bn``)."""
        layers = self.base_layers
        if not 0 <= from_index < len(layers):
            raise UsageError(
                f"cannot unfreeze from layer {from_index}: the base {self.backbone.name!r} has "
                f"{len(layers)} layers (valid: 0..{len(layers) - 1})"
            )
        self.base.trainable = True
        for i, layer in enumerate(layers):
            layer.trainable = i >= from_index
        self._fix_batchnorm()
        self.head.trainable = True

    def trainable_signature(self) -> tuple[int, ...]:
        """Identifies the current trainable state (changes mean a re-compile is due)."""
        return tuple(id(v) for v in self.keras_model.trainable_variables)

    def set_base_lr_multiplier(self, multiplier: float) -> None:
        self.gradient_scale.multiplier.assign(float(multiplier))

    def count_trainable(self) -> int:
        return int(sum(int(np.prod(v.shape)) for v in self.keras_model.trainable_variables))

    # ------------------------------------------------------------------ compile

    def compile(self, optimizer: Any, *, jit_compile: Any = False) -> None:
        self.keras_model.compile(
            optimizer=optimizer, loss=self.loss(), metrics=list(METRICS), jit_compile=jit_compile
        )

    def loss(self) -> Any:
        """The training loss: sparse categorical cross-entropy, with ``label_smoothing`` (the
        true class gets ``1 - s + s / k`` of the target, every other class ``s / k``)."""
        if not self.label_smoothing:
            return LOSS
        import keras

        smoothing, classes = float(self.label_smoothing), self.num_classes

        def smoothed_crossentropy(y_true: Any, y_pred: Any) -> Any:
            labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
            target = keras.ops.one_hot(labels, classes, dtype=y_pred.dtype)
            return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=smoothing)

        return smoothed_crossentropy

    # ------------------------------------------------------------------ export

    def export(
        self,
        path: str | Path,
        *,
        extra: dict[str, Any] | None = None,
        files: dict[str, bytes] | None = None,
    ) -> Path:
        """Save a ``.keras`` classifier that takes float RGB 0..255 images at ``input_size`` and
        carries its label names and preprocessing (its reader:
        :func:`transferkit.trainer.saved.load_finetuned`).

        The file holds standard Keras layers only, wherever the backbone's do: the preprocessing
        (when it is affine) as ``Rescaling`` or a frozen ``Dense(3)``, the head's pooling as
        ``GlobalAveragePooling2D``, no gradient scale, and an ``Identity`` named ``labels`` at the
        end. So ``keras.saving.load_model(path)`` loads it in safe mode without transferkit. The
        label names and metadata travel in the file as ``transferkit.json`` next to Keras' own;
        ``files`` (name -> bytes) are written beside it in the same archive.
        """
        import zipfile

        import keras

        from .layers import standard_preprocessing

        path = Path(path)
        if path.suffix != ".keras":
            raise UsageError(f"a fine-tuned model is saved as .keras; got {path}")
        args = self._checked_preprocess_mode()
        mode = args["mode"] if args else None
        h, w = self.input_size
        inputs = keras.Input((h, w, 3), name="image")
        x = standard_preprocessing(args, inputs) if args else inputs
        x = _apply_portable(self.head, self.base(x))
        metadata = {
            "backbone": self.backbone.name,
            "input_size": [h, w],
            "preprocessing": self.backbone.preprocessing,
            "preprocess_mode": mode,
            "preprocess_in_model": mode is not None,
            "head": str(self.head_name),
            "weights_source": self.backbone.weights_source,
            **self._resize_metadata(),
            **(extra or {}),
        }
        outputs = keras.layers.Identity(name="labels", dtype="float32")(x)
        exported = keras.Model(inputs, outputs, name="finetuned")
        from ..outputs import atomic_path

        with atomic_path(path) as tmp:
            exported.save(tmp)
            sidecar = {"label_names": self.label_names, "metadata": metadata}
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(METADATA_FILE, json.dumps(sidecar, indent=2, default=str))
                for name, data in (files or {}).items():
                    archive.writestr(name, data)
        return path

    def _resize_metadata(self) -> dict[str, Any]:
        """How images are brought to the input size, where the backbone names its own resize
        (the loader resizes the same way)."""
        resize = getattr(self.backbone, "resize", None)
        return {} if resize is None or resize.is_default else {"resize": resize.describe()}

    def _checked_preprocess_mode(self) -> dict[str, Any] | None:
        """:func:`checked_preprocess_mode` of this model's backbone at its input size."""
        return checked_preprocess_mode(self.backbone, self.input_size)


def checked_preprocess_mode(backbone: Backbone, input_size: Sequence[int]) -> dict[str, Any] | None:
    """A standard preprocessing (or a per-channel ``x * scale + offset``) equal to the
    backbone's ``preprocess`` on a test batch, as ``ImagePreprocessing`` arguments; None when
    there is none (the loader then asks the backbone plugin for its preprocessing)."""
    from .layers import PREPROCESS_MODES, ImagePreprocessing, preprocess_mode

    h, w = (int(v) for v in input_size)
    probe = np.random.default_rng(0).uniform(0, 255, size=(2, h, w, 3)).astype("float32")
    try:
        # copies: some preprocess functions change a NumPy input in place
        expected = np.asarray(backbone.preprocess(probe.copy()), dtype="float32")
        zeros = np.asarray(backbone.preprocess(np.zeros_like(probe)), dtype="float32")
        ones = np.asarray(backbone.preprocess(np.ones_like(probe)), dtype="float32")
    except Exception:
        return None
    guess = preprocess_mode(backbone.preprocessing)
    candidates: list[dict[str, Any]] = [{"mode": guess}] if guess else []
    candidates += [{"mode": m} for m in PREPROCESS_MODES if m not in (guess, "affine")]
    if expected.shape == probe.shape:
        offset = zeros.reshape(-1, 3)[0]
        scale = ones.reshape(-1, 3)[0] - offset
        candidates.append({"mode": "affine", "scale": scale.tolist(), "offset": offset.tolist()})
    for args in candidates:
        got = np.asarray(ImagePreprocessing(**args)(probe))
        if got.shape == expected.shape and np.allclose(got, expected, rtol=1e-4, atol=1e-3):
            return args
    return None
