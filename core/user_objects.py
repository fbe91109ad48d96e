"""Users' own objects where the jobs take names: a Keras model or a :class:`~transferkit.Backbone`
as ``backbone=``, a scikit-learn (or river) estimator as ``classifier=``, and ``--param KEY=VALUE``
for a named classifier, checked against the estimator's own ``get_params()``.

Nothing here imports TensorFlow unless a Keras model is actually given.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from . import registry
from .errors import UsageError
from .specs import NO_POOLING, Backbone, BackboneSpec


def _is_keras_model(obj: Any) -> bool:
    if not callable(obj) or not hasattr(obj, "count_params"):
        return False
    import keras

    return isinstance(obj, keras.layers.Layer)


def _identity(x: Any) -> Any:
    return x


def backbone_from_keras(model: Any, input_size: Any = None, pooling: str = "avg") -> Backbone:
    """A :class:`Backbone` around a user's Keras model that takes RGB 0..255 images (preprocess
    inside the model, or pass a ``Backbone`` with its ``preprocess``). A model giving a feature
    map is pooled by the host like any backbone; one giving feature vectors is taken as
    already pooled with ``pooling`` (its only pooling)."""
    import keras

    shape = None
    with contextlib.suppress(AttributeError, ValueError):
        shape = tuple(model.input_shape)
    size = tuple(input_size) if input_size else None
    if size is None and shape and len(shape) == 4 and shape[1] and shape[2]:
        size = (int(shape[1]), int(shape[2]))
    size = size or (224, 224)
    inputs = keras.Input((*size, 3), name="image")
    x = model(inputs)
    if len(x.shape) not in (2, 4):
        raise UsageError(
            f"the Keras model {model.name!r} gives outputs of shape {tuple(x.shape)}; a backbone "
            "gives a feature map (N, h, w, C) or feature vectors (N, D)"
        )
    name = str(getattr(model, "name", "") or "keras-model")
    wrapped = keras.Model(inputs, x, name=name)
    return Backbone(
        name=name,
        model=wrapped,
        preprocess=_identity,
        input_size=size,  # type: ignore[arg-type]
        pooling=(pooling or "avg") if len(x.shape) == 2 else NO_POOLING,
        weights_source="the Keras model passed in",
        preprocessing="none (the model takes RGB 0..255)",
    )


def backbone_spec(backbone: Any, *, pooling: str = "avg") -> BackboneSpec:
    """A backbone spec for a registered name, a ``BackboneSpec``, a ``Backbone`` or a Keras model.

    A ``Backbone`` is used as it is (its input size wins over the job's options); a Keras model
    is wrapped by :func:`backbone_from_keras` with the job's input size (and ``pooling``, the
    name of its vectors when it gives vectors rather than a feature map).
    """
    if isinstance(backbone, str):
        return registry.backbone(backbone)
    if isinstance(backbone, BackboneSpec):
        return backbone
    if isinstance(backbone, Backbone):
        given = backbone

        def from_backbone(weights: Any = None, input_size: Any = None) -> Any:
            return given

        return BackboneSpec(
            name=given.name,
            description="a Backbone passed in",
            factory=from_backbone,
            input_size=(int(given.input_size[0]), int(given.input_size[1])),
            metadata={"fingerprint": fingerprint(given.model)},
        )
    if _is_keras_model(backbone):
        model = backbone

        def from_keras(weights: Any = None, input_size: Any = None) -> Any:
            return backbone_from_keras(model, input_size, pooling)

        return BackboneSpec(
            name=str(getattr(model, "name", "") or "keras-model"),
            description="a Keras model passed in",
            factory=from_keras,
            metadata={"fingerprint": fingerprint(model)},
        )
    raise UsageError(
        f"backbone must be a name (see `transferkit backbones`), a transferkit.Backbone or a "
        f"Keras model; got {type(backbone).__name__}"
    )


def fingerprint(model: Any) -> str:
    """A hash of a Keras model's architecture and weights (a cache key for its features)."""
    digest = hashlib.sha256()
    try:
        digest.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    except Exception:
        digest.update(type(model).__qualname__.encode())
    for weight in model.weights:
        digest.update(str(weight.path if hasattr(weight, "path") else weight.name).encode())
        digest.update(memoryview(weight.numpy()).tobytes())
    return digest.hexdigest()[:20]


# --------------------------------------------------------------------------- classifiers


def is_estimator(obj: Any) -> bool:
    """A scikit-learn-style estimator (``fit`` and ``get_params``) or a river model."""
    return not isinstance(obj, str) and (
        (callable(getattr(obj, "fit", None)) and callable(getattr(obj, "get_params", None)))
        or callable(getattr(obj, "learn_one", None))
    )


def estimator_label(estimator: Any) -> str:
    """A short name for a user's estimator: its repr on one line (``LogisticRegression(C=0.1)``)."""
    text = " ".join(repr(estimator).split())
    return text if len(text) <= 80 else type(estimator).__name__


def fresh_estimator(estimator: Any) -> Any:
    """An unfitted copy of a user's estimator (``sklearn.base.clone``; river's ``clone``)."""
    if callable(getattr(estimator, "learn_one", None)) and callable(
        getattr(estimator, "clone", None)
    ):
        return estimator.clone()
    from sklearn.base import clone

    return clone(estimator)


def parse_params(items: Any) -> dict[str, Any]:
    """``["C=0.1", "max_iter=500"]`` (or a mapping) into typed values (YAML scalars)."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r}: write KEY=VALUE, e.g. --param C=0.1")
        try:
            params[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            params[key.strip()] = value
    return params


def apply_params(estimator: Any, params: Mapping[str, Any], name: str) -> Any:
    """``estimator`` with ``params`` set, each checked against its ``get_params()``; a bare key
    (``C``) also names a nested one (``logisticregression__C``) when only one ends with it."""
    if not params:
        return estimator
    if not callable(getattr(estimator, "get_params", None)):
        raise UsageError(f"classifier {name!r} takes no parameters (it has no get_params())")
    known = estimator.get_params(deep=True)
    resolved: dict[str, Any] = {}
    for key, value in params.items():
        if key not in known:
            nested = [k for k in known if k.endswith(f"__{key}")]
            if len(nested) == 1:
                key = nested[0]
            else:
                close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                shown = ", ".join(k for k in known if "__" not in k)
                raise UsageError(
                    f"classifier {name!r} has no parameter {key!r}{hint}; its parameters: {shown}"
                )
        resolved[key] = value
    try:
        return estimator.set_params(**resolved)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"classifier {name!r}: cannot set {resolved}: {exc}") from exc
