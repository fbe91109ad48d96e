"""TF Hub backbones: any TF2 SavedModel that maps images to feature vectors, inside Keras 3.

On the command line a TF Hub backbone is named ``tfhub:<handle>``::

    transferkit extract photos/ --out f.h5 \\
        --backbone tfhub:https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5
    transferkit extract photos/ --backbone tfhub:file:///models/mobilenet_fv --out f.h5
    transferkit extract photos/ --backbone tfhub:/models/mobilenet_fv --out f.h5

and in Python ``registry.backbone("tfhub:<handle>").factory(...)`` (the registry's parametrised
specs: a spec named ``tfhub:`` receives the rest of the name as ``handle=``), or directly
:func:`build(handle, ...) <build>`. The handle is

* a URL, resolved, downloaded and cached by ``tensorflow_hub`` in ``$TFHUB_CACHE_DIR`` (default
  ``<tmp>/tfhub_modules``) under ``sha1(handle)``: a cache directory filled in advance works with
  no internet;
* a ``file://`` URL or a local SavedModel folder.

``tensorflow_hub.KerasLayer`` is a Keras 2 layer and cannot be used in a Keras 3 model.
:class:`HubFeatureLayer` is a Keras 3 layer (registered as ``transferkit>HubFeatureLayer``) that
calls the SavedModel and wraps each of its variables in a ``keras.Variable`` (which wraps the
``tf.Variable`` without copying), so that the layer can be frozen or fine-tuned like any other:
``layer.trainable = False/True`` works at any time (variables that the SavedModel itself marks
non-trainable, such as BatchNorm statistics, never train). A ``.keras`` file holding the layer
reloads as long as the handle is reachable; the layer's variable values are saved in the file.

Input: float32 RGB images scaled to [0, 1] (the TF Hub image convention; ``preprocess`` is
``x / 255``). The input size is given with ``input_size`` or read from the SavedModel's signature
(224 x 224 when it accepts any size); the feature width is read from the output of one forward pass.
A ``feature_vector`` model's output is already pooled (``avg``): that is its only pooling, and
``--pooling max`` is refused; a model that outputs a feature map is pooled by the host.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from typing import Any

from transferkit import Backbone, BackboneSpec, UsageError, WeightsUnavailableError, hookimpl
from transferkit.plugin import DEFAULT_WEIGHTS, normalise_weights, parse_input_size
from transferkit.plugins._backbone_utils import load_local_weights

DEFAULT_SIZE = 224
PREPROCESSING = "x / 255: RGB scaled to [0, 1] (the TF Hub image convention)"


def cache_dir() -> str:
    """Where ``tensorflow_hub`` caches downloaded models (honours ``$TFHUB_CACHE_DIR``)."""
    import tempfile

    return os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")


def cache_path(handle: str) -> str:
    """The folder a remote ``handle`` is cached in: ``$TFHUB_CACHE_DIR/<sha1(handle)>``."""
    return os.path.join(cache_dir(), hashlib.sha1(handle.encode("utf8")).hexdigest())


def _local_path(handle: str) -> str | None:
    """The folder of a ``file://`` URL or a local path; None for a remote handle."""
    parsed = urllib.parse.urlparse(handle)
    if parsed.scheme == "file":
        return urllib.request.url2pathname(parsed.path)
    if parsed.scheme in ("http", "https", "gs"):
        return None
    return os.path.expanduser(handle)


def resolve(handle: str) -> str:
    """A local SavedModel folder for ``handle`` (downloading a remote one through the cache)."""
    if not handle:
        raise UsageError("a TF Hub backbone needs a handle: tfhub:<URL, file:// URL or folder>")
    local = _local_path(handle)
    if local is not None:
        if not os.path.isdir(local):
            raise UsageError(
                f"TF Hub handle {handle!r}: no SavedModel folder at {local}; give a folder "
                f"holding saved_model.pb, a file:// URL to one, or an https:// TF Hub URL"
            )
        return local
    import tensorflow_hub as hub

    try:
        return str(hub.resolve(handle))
    except Exception as exc:
        raise WeightsUnavailableError(
            f"cannot download the TF Hub model {handle} ({type(exc).__name__}); without internet "
            f"use a local copy (--backbone tfhub:/path/to/savedmodel or tfhub:file:///path) or "
            f"fill the cache folder {cache_path(handle)} with the unpacked model"
        ) from None


def _tracked_variables(loaded: Any) -> tuple[list[Any], set[int]]:
    """Every ``tf.Variable`` of a loaded SavedModel in a stable order, and the ids of those it
    marks trainable (its ``trainable_variables`` when it has them, else each variable's flag)."""
    import tensorflow as tf

    variables = list(getattr(loaded, "variables", None) or [])
    if not variables:
        seen: set[int] = set()
        for obj in tf.train.TrackableView(loaded).descendants():
            if isinstance(obj, tf.Variable) and id(obj) not in seen:
                seen.add(id(obj))
                variables.append(obj)
        variables.sort(key=lambda v: v.name)
    declared = getattr(loaded, "trainable_variables", None)
    if declared is not None and len(declared) > 0:
        trainable = {id(v) for v in declared}
    else:
        trainable = {id(v) for v in variables if v.trainable}
    return variables, trainable


def _hub_layer_class() -> Any:
    """Define (once) and return the Keras 3 layer; Keras is imported only when needed."""
    global _HubFeatureLayer
    if _HubFeatureLayer is not None:
        return _HubFeatureLayer
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="transferkit", name="HubFeatureLayer")
    class HubFeatureLayer(keras.layers.Layer):
        """A TF2 SavedModel (TF Hub model) as a Keras 3 layer; see the module docstring."""

        def __init__(
            self,
            handle: str,
            input_size: tuple[int, int] | list[int] | None = None,
            signature: str | None = None,
            output_key: str | None = None,
            trainable: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(trainable=trainable, **kwargs)
            self.handle = handle
            self.signature = signature
            self.output_key = output_key
            import tensorflow_hub as hub

            path = resolve(handle)
            self._loaded = hub.load(path)
            if signature:
                self._func = self._loaded.signatures[signature]
            elif callable(self._loaded):
                self._func = self._loaded.__call__
            else:
                self._func = self._loaded.signatures["serving_default"]
            self._accepts_training = _accepts_training(self._func)
            variables, trainable_ids = _tracked_variables(self._loaded)
            self._frozen_forever = [id(v) not in trainable_ids for v in variables]
            wrapped = []
            for index, variable in enumerate(variables):
                clean = variable.name.split(":")[0].replace("/", "_") or f"variable_{index}"
                wrapped.append(
                    keras.Variable(variable, trainable=id(variable) in trainable_ids, name=clean)
                )
            # Tracked by Keras: trainable ones in _trainable_variables, the rest non-trainable.
            self.hub_variables = wrapped
            # Only now that the variables exist can the trainable setter reach them. A plain
            # `self.trainable = trainable` would be skipped: TF's tracking __setattr__ ignores an
            # assignment of the value the attribute already holds (set by Layer.__init__).
            keras.layers.Layer.trainable.fset(self, bool(trainable))
            self.input_size = tuple(int(v) for v in (input_size or _signature_size(self._func)))
            probe = self._outputs(tf.zeros((1, *self.input_size, 3), tf.float32), False)
            self._output_tail = tuple(int(d) for d in probe.shape[1:])
            self.built = True

        def _outputs(self, images: Any, training: bool) -> Any:
            if self._accepts_training:
                result = self._func(images, training=training)
            else:
                result = self._func(images)
            if isinstance(result, dict):
                key = self.output_key or ("default" if "default" in result else sorted(result)[0])
                result = result[key]
            return result

        def call(self, inputs: Any, training: bool | None = None) -> Any:
            # Train-mode behaviour (dropout, BatchNorm statistics) only when fine-tuning.
            train = bool(training) and self.trainable
            return self._outputs(tf.cast(inputs, tf.float32), train)

        def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
            return (input_shape[0], *self._output_tail)

        def save_own_variables(self, store: Any) -> None:
            for index, variable in enumerate(self.hub_variables):
                store[str(index)] = variable.numpy()

        def load_own_variables(self, store: Any) -> None:
            if len(store.keys()) != len(self.hub_variables):
                raise ValueError(
                    f"the saved layer has {len(store.keys())} variables, the TF Hub model "
                    f"{self.handle} has {len(self.hub_variables)}: is it the same model?"
                )
            for index, variable in enumerate(self.hub_variables):
                variable.assign(store[str(index)])

        def get_config(self) -> dict[str, Any]:
            config: dict[str, Any] = super().get_config()
            config.update(
                {
                    "handle": self.handle,
                    "input_size": list(self.input_size),
                    "signature": self.signature,
                    "output_key": self.output_key,
                }
            )
            return config

    _HubFeatureLayer = HubFeatureLayer
    return HubFeatureLayer


_HubFeatureLayer: Any = None


def keras_objects() -> dict[str, Any]:
    """Define this plugin's Keras layer; call it before ``keras.saving.load_model`` on a model
    holding one in a process that has not built a TF Hub backbone. Returns the custom objects."""
    return {"transferkit>HubFeatureLayer": _hub_layer_class()}


@hookimpl
def register_keras_objects(register: Any) -> None:
    # lazily: defining the layer imports TensorFlow Hub, needed only for a model holding one
    register(_hub_layer_class, name="transferkit>HubFeatureLayer")


def __getattr__(name: str) -> Any:
    if name == "HubFeatureLayer":
        return _hub_layer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _accepts_training(func: Any) -> bool:
    """Whether a restored function takes a ``training`` argument (as TF Hub models often do)."""
    for concrete in getattr(func, "concrete_functions", None) or []:
        args, kwargs = concrete.structured_input_signature
        if len(args) > 1 or "training" in kwargs:  # the rule tensorflow_hub.KerasLayer uses
            return True
    return False


def _signature_size(func: Any) -> tuple[int, int]:
    """The static (height, width) of the function's image input, or the 224 x 224 default."""
    concretes = list(getattr(func, "concrete_functions", None) or [])
    if not concretes and hasattr(func, "structured_input_signature"):
        concretes = [func]
    for concrete in concretes:
        args, kwargs = concrete.structured_input_signature
        specs = [*args, *kwargs.values()]
        for spec in specs:
            shape = getattr(spec, "shape", None)
            if shape is not None and len(shape) == 4:
                height, width = shape[1], shape[2]
                if height is not None and width is not None:
                    return (int(height), int(width))
    return (DEFAULT_SIZE, DEFAULT_SIZE)


def preprocess(x: Any) -> Any:
    """``x / 255``: 0..255 RGB to the [0, 1] range TF Hub image models expect."""
    import tensorflow as tf

    return tf.cast(x, tf.float32) / 255.0


def build(
    handle: str,
    weights: Any = "default",
    input_size: Any = None,
    trainable: bool = False,
    pooled: str = "avg",
) -> Backbone:
    """A backbone around the TF Hub model ``handle`` (see the module docstring).

    ``weights``: ``"default"`` keeps the model's own weights; a path loads a weights file saved from
    a backbone built on the same handle. Random initialisation is not available for a SavedModel.
    A model that outputs a feature map (N, h, w, C) is pooled by the host like any backbone; one
    that outputs feature vectors (N, D), as TF Hub's ``feature_vector`` models do, says they are
    already pooled with ``pooled`` (global average pooling, for those models), the only pooling
    it then offers.
    """
    import keras

    source = normalise_weights(weights)
    if source is None:
        raise UsageError(
            "a TF Hub model has no random initialisation; use --weights default (its own "
            "weights) or --weights PATH"
        )
    path = None if source == DEFAULT_WEIGHTS else source
    input_size = parse_input_size(input_size)
    layer = _hub_layer_class()(handle, input_size=input_size, trainable=trainable, name="tfhub")
    size = layer.input_size
    inputs = keras.Input((*size, 3), name="input_layer")
    x = layer(inputs)
    if len(layer._output_tail) not in (1, 3):
        x = keras.layers.Flatten(name="flatten")(x)  # vectors, whatever their shape
    model = keras.Model(inputs, x, name="tfhub_backbone")
    if path is not None:
        load_local_weights(model, model, path)
    return Backbone(
        name=f"tfhub:{handle}",
        model=model,
        preprocess=preprocess,
        input_size=size,
        weights_source=f"TF Hub {handle}" if path is None else f"file {path}",
        preprocessing=PREPROCESSING,
        pooling="none" if len(layer._output_tail) == 3 else pooled,
        extra={"handle": handle, "layer": layer},
    )


@hookimpl
def register_backbones(register: Any) -> None:
    register(
        BackboneSpec(
            name="tfhub:",
            description="a TF Hub / SavedModel feature-vector model: tfhub:<URL, file://, folder>",
            factory=build,
            input_size=(DEFAULT_SIZE, DEFAULT_SIZE),
            preprocessing=PREPROCESSING,
            weights="the TF Hub model's own (cached in $TFHUB_CACHE_DIR)",
            metadata={"parameter": "handle", "example": "tfhub:file:///models/my_savedmodel"},
        )
    )
