"""The host's pooling: a backbone's feature map becomes feature vectors here, and nowhere else.

A backbone factory returns the network up to its last feature map (``(N, h, w, C)``);
:func:`pool` adds ``avg`` (global average), ``max`` (global max) or ``flatten`` on top and
returns the pooled backbone, whose ``model`` is what an inference runtime runs. Asked for several
poolings at once, :func:`pool` returns one model whose output is the poolings' vectors side by
side (``widths`` says where each one lies, :func:`split` cuts them apart): the network then runs
once for all of them, and each part equals what that pooling alone gives.

A transformer's backbone gives a token sequence ``(N, T, C)`` and says how it is laid out
(``Backbone.tokens``): ``cls`` takes the class token, ``mean`` averages the patch tokens (class
and register tokens left out), ``cls+mean`` puts the two side by side (DINOv2's linear-probe
recipe), and ``avg``, ``max`` and ``flatten`` pool the patch tokens as the feature map of their
grid. Every pooling is made of Keras' own layers (cropping, reshaping, pooling), so a pooled
model converts to every inference runtime and reloads from a ``.keras`` file.

A backbone whose network returns pooled vectors already (``Backbone.pooling`` set, e.g. a TF Hub
feature-vector model) offers that pooling only; any other is a :class:`UsageError`.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from .errors import UsageError
from .specs import NO_POOLING, POOLINGS, Backbone, TokenLayout

_LAYERS = {
    "avg": ("GlobalAveragePooling2D", "avg_pool"),
    "max": ("GlobalMaxPooling2D", "max_pool"),
    "flatten": ("Flatten", "flatten"),
}


def check_poolings(backbone: Backbone, poolings: Sequence[str]) -> tuple[str, ...]:
    """``poolings`` (each once, in order), refused where ``backbone`` does not offer one."""
    chosen = tuple(dict.fromkeys(str(p).lower() for p in poolings))
    if not chosen:
        raise UsageError("give at least one pooling")
    for pooling in chosen:
        if pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
        if pooling not in backbone.poolings and backbone.pooling == NO_POOLING:
            kind = "token sequence" if backbone.tokens is not None else "feature map"
            if backbone.tokens is not None and "cls" in pooling:
                kind = "token sequence with no class token"
            raise UsageError(
                f"backbone {backbone.name} gives a {kind}, whose poolings are "
                f"{', '.join(backbone.poolings)}; --pooling {pooling} is not one of them"
            )
        if pooling not in backbone.poolings:
            raise UsageError(
                f"backbone {backbone.name} returns feature vectors that are already pooled "
                f"({backbone.pooling}), so it offers --pooling {backbone.pooling} only"
            )
    return chosen


def _model_name(name: str, suffix: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")[:60] or "backbone"
    return f"{safe}_{suffix}"


def pool(backbone: Backbone, pooling: str | Sequence[str]) -> Backbone:
    """``backbone`` with its feature map pooled (see the module docstring).

    ``pooling`` is one of ``avg``, ``max``, ``flatten``, or a sequence of them; ``"none"``
    returns ``backbone`` itself (the map, as fine-tuning takes it). The result's ``pooling`` is
    the pooling (several joined by ``+``) and ``extra["widths"]`` the width of each, in order.
    """
    if pooling == NO_POOLING:
        return backbone
    poolings = check_poolings(backbone, [pooling] if isinstance(pooling, str) else pooling)
    if backbone.pooling != NO_POOLING:  # vectors already: its own pooling, offered once
        return dataclasses.replace(
            backbone, extra={**backbone.extra, "widths": {backbone.pooling: backbone.feature_dim}}
        )
    import keras

    widths = backbone.feature_dims
    model = backbone.model
    if getattr(model, "inputs", None) and getattr(model, "outputs", None):
        # the same layers, one graph; one input as a tensor, not a list of one
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        feature_map = model.outputs[0]
    else:
        inputs = keras.Input((*backbone.input_size, 3), name="image")
        feature_map = model(inputs)
    if backbone.tokens is not None:
        outputs = _token_poolings(keras, feature_map, backbone.tokens, poolings)
    else:
        outputs = [_map_pooling(keras, feature_map, name) for name in poolings]
    joined = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(name="poolings")(outputs)
    label = "+".join(poolings)
    pooled = keras.Model(inputs, joined, name=_model_name(backbone.name, label.replace("+", "_")))
    return dataclasses.replace(
        backbone,
        model=pooled,
        pooling=label,
        extra={**backbone.extra, "widths": {p: widths[p] for p in poolings}},
    )


def _map_pooling(keras: Any, feature_map: Any, name: str) -> Any:
    layer, layer_name = _LAYERS[name]
    return getattr(keras.layers, layer)(name=layer_name)(feature_map)


def _token_poolings(
    keras: Any, tokens: Any, layout: TokenLayout, poolings: Sequence[str]
) -> list[Any]:
    """Each pooling of a token sequence ``(N, prefix + h * w, C)``, in order; the class token
    and the patch tokens are cut once and shared."""
    length, channels = int(tokens.shape[1]), int(tokens.shape[2])
    parts: dict[str, Any] = {}

    def patches() -> Any:
        if "patches" not in parts:
            cropped = tokens
            if layout.prefix:
                cropped = keras.layers.Cropping1D((layout.prefix, 0), name="patch_tokens")(tokens)
            parts["patches"] = cropped
        return parts["patches"]

    def cls() -> Any:
        if "cls" not in parts:
            first = keras.layers.Cropping1D((0, length - 1), name="class_token_1")(tokens)
            parts["cls"] = keras.layers.Flatten(name="class_token")(first)
        return parts["cls"]

    def mean() -> Any:
        if "mean" not in parts:
            parts["mean"] = keras.layers.GlobalAveragePooling1D(name="patch_mean")(patches())
        return parts["mean"]

    def grid() -> Any:
        if "grid" not in parts:
            shape = (*layout.grid, channels)
            parts["grid"] = keras.layers.Reshape(shape, name="patch_grid")(patches())
        return parts["grid"]

    outputs = []
    for name in poolings:
        if name == "cls":
            outputs.append(cls())
        elif name == "mean":
            outputs.append(mean())
        elif name == "cls+mean":
            outputs.append(keras.layers.Concatenate(name="cls_mean")([cls(), mean()]))
        else:
            outputs.append(_map_pooling(keras, grid(), name))
    return outputs


def split(rows: Any, widths: dict[str, int]) -> dict[str, Any]:
    """The feature rows of each pooling, cut from the side-by-side rows of a :func:`pool` model
    of several poolings (``widths`` in the same order)."""
    parts, start = {}, 0
    for name, width in widths.items():
        parts[name] = rows[:, start : start + width]
        start += width
    if start != rows.shape[1]:
        raise ValueError(f"rows of width {rows.shape[1]}, but the poolings add up to {start}")
    return parts
