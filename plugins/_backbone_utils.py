"""Helpers the built-in backbone plugins share: weights arguments, pooling, local weights files."""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

from transferkit import UsageError, WeightsUnavailableError
from transferkit.sizes import parse_input_size

OFFLINE_HINT = (
    "use --weights none (random initialisation), --weights PATH (a local weights file), "
    "or the offline pretrained backbone efficientnet-lite0"
)


def normalise_weights(weights: Any) -> str | None:
    """``"default"``/``"imagenet"`` -> ``"imagenet"``; ``None``/``"none"`` -> None; else a path."""
    if weights is None:
        return None
    text = str(weights)
    if text.lower() in ("none", "random"):
        return None
    if text.lower() in ("default", "imagenet"):
        return "imagenet"
    path = os.path.expanduser(text)
    if not os.path.exists(path):
        raise WeightsUnavailableError(
            f"weights file {text!r} does not exist; give an existing file, or "
            f"--weights none for random initialisation"
        )
    return path


def is_download_failure(exc: BaseException) -> bool:
    """True for what ``keras.utils.get_file`` raises when a download cannot complete."""
    if isinstance(exc, OSError):  # URLError, socket timeouts, connection resets
        return True
    text = str(exc)
    return "URL fetch failure" in text or "corrupted file" in text


def input_size_of(input_size: Any, default: int) -> tuple[int, int]:
    """``(height, width)`` from None (the default), an int, ``"160"``/``"160x128"`` or a pair;
    these networks need at least 32 pixels a side."""
    size = parse_input_size(input_size, minimum=32)
    return (default, default) if size is None else size


def add_pooling(base: Any, pooling: str, name: str) -> Any:
    """A model whose layers are ``base``'s own layers plus one pooling/flatten layer at the end
    (``pooling="none"`` returns ``base`` unchanged: the conv feature map)."""
    import keras

    if pooling == "none":
        return base
    layer = {
        "avg": lambda: keras.layers.GlobalAveragePooling2D(name="avg_pool"),
        "max": lambda: keras.layers.GlobalMaxPooling2D(name="max_pool"),
        "flatten": lambda: keras.layers.Flatten(name="flatten"),
    }[pooling]()
    return keras.Model(base.inputs, layer(base.outputs[0]), name=name)


def check_pooling(pooling: str) -> str:
    pooling = (pooling or "avg").lower()
    if pooling not in ("avg", "max", "flatten", "none"):
        raise UsageError(f"unknown pooling {pooling!r}; use avg, max, flatten or none")
    return pooling


def load_local_weights(model: Any, base: Any, path: str) -> None:
    """Load a local weights file into ``model`` (saved from a backbone model) or, failing that,
    into ``base`` (a plain network file such as Keras's ``..._notop.h5``)."""
    errors = []
    for target in (model, base) if model is not base else (model,):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                target.load_weights(path)
            # Keras loads what matches and only warns about the rest: that is a failure here.
            partial = [
                str(w.message)
                for w in caught
                if re.search(r"skipping|freshly-initiali[sz]ed|mismatch", str(w.message), re.I)
            ]
            if partial:
                raise ValueError(f"the file does not match the network: {partial[0]}")
            return
        except Exception as exc:  # noqa: PERF203 - try the next layout
            errors.append(f"{type(exc).__name__}: {exc}")
    raise WeightsUnavailableError(
        f"cannot load weights file {path!r} into {model.name} ({errors[-1].splitlines()[0]}); "
        f"give a file saved from the same backbone and input size, or --weights none"
    )


def output_width(model: Any) -> int:
    shape = model.outputs[0].shape
    width = 1
    for dim in shape[1:]:
        width *= int(dim)
    return width


def pooling_widths(feature_map_model: Any) -> dict[str, int]:
    """Feature width for each pooling of a network whose output is a (N, h, w, C) feature map."""
    shape = feature_map_model.outputs[0].shape
    if len(shape) != 4:
        width = output_width(feature_map_model)
        return {"avg": width, "max": width, "flatten": width}
    height, width, channels = (int(d) for d in shape[1:])
    return {"avg": channels, "max": channels, "flatten": height * width * channels}
