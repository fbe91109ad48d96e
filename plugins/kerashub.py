"""Backbones from keras-hub: ``keras-hub:<preset>``.

The preset is a keras-hub preset name (``dinov2_small``, ``resnet_vd_50_imagenet``; downloaded by
keras-hub into its cache), a ``hf://`` or ``kaggle://`` handle, or a local preset folder (what
``save_to_preset`` writes: ``config.json``, ``model.weights.h5``, ``metadata.json``, and an
``image_converter.json`` when a converter was saved there), which works offline::

    transferkit extract photos/ -b keras-hub:/models/dinov2_small --pooling cls+mean -o f.h5

A vision transformer (DINOv2, DINOv3, ViT, SigLIP, ...) gives a token sequence ``(N, T, C)``;
the backbone says how it is laid out (:class:`transferkit.plugin.TokenLayout`: the class token
and any register tokens, then the patch grid) and the host pools it (``cls``, ``mean``,
``cls+mean``, or ``avg``/``max``/``flatten`` over the patch grid). A CNN preset (ResNet,
EfficientNet, ...) gives a feature map, pooled like any other.

Preprocessing is the preset's image converter: the backbone's ``resize`` is the converter's
(interpolation, antialias, the centre cut to the input's aspect ratio), and its scale and offset
(mean and standard deviation folded in) run after it in the input pipeline, so the features of
an image of any size equal keras-hub's converter + backbone. A preset without
an ``image_converter.json`` is refused unless the caller gives ``scale``/``offset``
(:func:`build`). The input size of a patch model must be a multiple of its patch size.

``transferkit backbones 'keras-hub*'`` lists keras-hub's image presets (:data:`FAMILIES`) with
their family, parameters, input size (from the name; 224 where it gives none) and whether they
are already in the cache (OFFLINE ``cached``), read from keras-hub's preset tables without
importing it and without the network. keras-hub, Keras and TensorFlow are imported only when a
backbone is built.
"""

from __future__ import annotations

import ast
import functools
import glob
import importlib.util
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from transferkit import Backbone, BackboneSpec, UsageError, WeightsUnavailableError, hookimpl
from transferkit.plugin import (
    DEFAULT_WEIGHTS,
    Resize,
    TokenLayout,
    normalise_weights,
    parse_input_size,
)
from transferkit.plugins._backbone_utils import load_local_weights

log = logging.getLogger(__name__)

FAMILY = "keras-hub:"
DEFAULT_SIZE = 224
OFFLINE_HINT = (
    "without internet use a local preset folder (keras-hub:/path/to/preset, written by "
    "save_to_preset), a preset already in the keras-hub cache ($KAGGLEHUB_CACHE or "
    "$HF_HOME), or the offline backbone efficientnet-lite0"
)


# keras-hub's model folders whose presets are image backbones giving features
FAMILIES = (
    "clip",
    "cspnet",
    "deit",
    "densenet",
    "dinov2",
    "dinov3",
    "efficientnet",
    "hgnetv2",
    "metaclip_2",
    "mobilenet",
    "mobilenetv5",
    "resnet",
    "siglip",
    "swin_transformer",
    "vgg",
    "vit",
    "xception",
)
_SIZE_IN_NAME = re.compile(r"(?:_r?)(\d{3})(?=_|$)")
# the input sizes a preset's name may carry (densenet_121 is a depth, not a size)
_SIZES = {96, 128, 160, 192, 224, 240, 256, 260, 288, 300, 320, 336, 378, 380, 384, 448, 512, 518}


def image_presets() -> dict[str, dict[str, Any]]:
    """keras-hub's image presets, name -> ``{"family", "params", "description", "handle",
    "input_size"}``, read from its ``*_presets.py`` tables (plain literals) without importing
    keras-hub (so without TensorFlow); empty where keras-hub is not installed."""
    found = importlib.util.find_spec("keras_hub")
    if found is None or not found.submodule_search_locations:
        return {}
    models = os.path.join(list(found.submodule_search_locations)[0], "src", "models")
    presets: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        for path in sorted(glob.glob(os.path.join(models, family, "*_presets.py"))):
            for name, entry in _literal_presets(path).items():
                meta = entry.get("metadata", {})
                sizes = [int(s) for s in _SIZE_IN_NAME.findall(name) if int(s) in _SIZES]
                presets[name] = {
                    "family": str(meta.get("path") or family),
                    "params": int(meta.get("params") or 0),
                    "description": " ".join(str(meta.get("description", "")).split()),
                    "handle": str(entry.get("kaggle_handle", "")),
                    "input_size": (sizes[-1],) * 2 if sizes else (DEFAULT_SIZE, DEFAULT_SIZE),
                }
    return presets


def _literal_presets(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id.endswith("presets"):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    return {}
                return value if isinstance(value, dict) else {}
    return {}


def cached_path(handle: str) -> str:
    """The folder a ``kaggle://`` or ``hf://`` handle is cached in (kagglehub's
    ``$KAGGLEHUB_CACHE``, Hugging Face's ``$HF_HUB_CACHE``); "" for another handle."""
    if handle.startswith("kaggle://"):
        cache = os.environ.get("KAGGLEHUB_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "kagglehub"
        )
        return os.path.join(cache, "models", *handle[len("kaggle://") :].split("/"))
    if handle.startswith("hf://"):
        home = os.environ.get("HF_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache", "huggingface"
        )
        cache = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
        repo = handle[len("hf://") :].strip("/").replace("/", "--")
        return os.path.join(cache, f"models--{repo}", "snapshots")
    return ""


def is_cached(handle: str) -> bool:
    """Whether the preset of ``handle`` is already downloaded (its ``config.json`` is there)."""
    folder = cached_path(handle)
    if not folder:
        return False
    if handle.startswith("hf://"):
        return bool(glob.glob(os.path.join(glob.escape(folder), "*", "config.json")))
    # kagglehub marks each finished file (or the whole bundle) complete beside the folder
    variation, version = os.path.split(folder)
    markers = (
        os.path.join(variation, ".complete", version, "config.json.complete"),
        os.path.join(variation, f"{version}.complete"),
    )
    return os.path.isfile(os.path.join(folder, "config.json")) and any(map(os.path.isfile, markers))


def is_local(preset: str) -> bool:
    """Whether ``preset`` names a local preset folder (one holding ``config.json``)."""
    path = os.path.expanduser(preset)
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def _resolve(preset: str) -> str:
    if not preset:
        raise UsageError(
            "a keras-hub backbone needs a preset: keras-hub:<preset name, hf:// or kaggle:// "
            "handle, or a local preset folder>"
        )
    path = os.path.expanduser(preset)
    if os.path.isdir(path):
        if not is_local(path):
            raise UsageError(
                f"keras-hub preset folder {preset} holds no config.json; give a folder written by "
                f"a keras-hub Backbone's save_to_preset, or a preset name"
            )
        return path
    if os.sep in preset and "://" not in preset:
        raise UsageError(
            f"keras-hub preset folder {preset} does not exist; give a folder written by "
            f"save_to_preset, or a preset name (transferkit backbones 'keras-hub*')"
        )
    return preset


def _download_failure(preset: str, exc: BaseException) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot load the keras-hub preset {preset} ({type(exc).__name__}, no internet or no "
        f"such preset); {OFFLINE_HINT}"
    )


def _patch_size(config: dict[str, Any]) -> tuple[int, int] | None:
    for source in (config, config.get("vision_encoder", {}).get("config", {})):
        size = source.get("patch_size")
        if size:
            if isinstance(size, int):
                return (size, size)
            return (int(size[0]), int(size[1]))
    return None


def _image_shape(config: dict[str, Any]) -> tuple[int, int] | None:
    shape = config.get("image_shape")
    if shape and shape[0] and shape[1]:
        return (int(shape[0]), int(shape[1]))
    return None


def _check_size(preset: str, size: tuple[int, int], patch: tuple[int, int] | None) -> None:
    if patch is None:
        return
    if size[0] % patch[0] or size[1] % patch[1]:
        raise UsageError(
            f"input size {size[0]}x{size[1]} is not a multiple of the patch size "
            f"{patch[0]}x{patch[1]} of keras-hub:{preset}; give e.g. "
            f"--input-size {max(1, size[0] // patch[0]) * patch[0]}"
        )


def _converter(preset: str, scale: Any, offset: Any) -> tuple[Any, Any, Any, Resize]:
    """The preset's converter's ``(scale, offset, image_size, resize)``, or the caller's (with
    transferkit's own resize)."""
    if scale is not None or offset is not None:
        return scale, offset, None, Resize()
    try:
        converter = load_converter(preset)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(
            f"keras-hub preset {preset} has no image converter ({exc.__class__.__name__}), so "
            f"its preprocessing is unknown; save one into the preset folder "
            f"(keras_hub.layers.ImageConverter(scale=..., offset=...).save_to_preset(DIR)) or "
            f"give scale and offset to transferkit.plugins.kerashub.build"
        ) from None
    return converter.scale, converter.offset, converter.image_size, converter_resize(converter)


def load_converter(preset: str) -> Any:
    """The preset's ``ImageConverter``. keras-hub finds it by the backbone's class; a preset of
    a vision encoder alone (SigLIP's, CLIP's: its converter names the image-text backbone) is
    read from its ``image_converter.json`` as saved."""
    import keras
    import keras_hub

    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except ValueError:
        if not is_local(preset) or not os.path.isfile(
            os.path.join(os.path.expanduser(preset), "image_converter.json")
        ):
            raise
    from keras_hub.src.utils.preset_utils import load_json

    return keras.saving.deserialize_keras_object(load_json(preset, "image_converter.json"))


def converter_resize(converter: Any) -> Resize:
    """How a keras-hub ``ImageConverter`` resizes (its ``Resizing`` layer's interpolation,
    antialias and crop to the aspect ratio), as the input pipeline's :class:`Resize`. A converter
    that pads to the aspect ratio instead resizes the whole image here (logged)."""
    method = str(getattr(converter, "interpolation", "bilinear"))
    crop = bool(getattr(converter, "crop_to_aspect_ratio", True))
    if getattr(converter, "pad_to_aspect_ratio", False):
        log.warning("the preset's converter pads to the aspect ratio; the whole image is resized")
        crop = False
    return Resize(method, crop_to_aspect_ratio=crop, antialias=bool(converter.antialias))


def _channel_values(value: Any) -> list[float] | float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return [float(v) for v in value]


def make_preprocess(scale: Any, offset: Any) -> Any:
    """``x * scale + offset`` (each a number or one value per channel), TensorFlow-traceable."""
    scale, offset = _channel_values(scale), _channel_values(offset)

    def preprocess(x: Any) -> Any:
        import tensorflow as tf

        x = tf.cast(x, tf.float32)
        if scale is not None:
            x = x * tf.constant(scale, tf.float32)
        if offset is not None:
            x = x + tf.constant(offset, tf.float32)
        return x

    return preprocess


def _describe_preprocessing(scale: Any, offset: Any) -> str:
    def text(value: Any) -> str:
        value = _channel_values(value)
        if isinstance(value, list):
            return "(" + ", ".join(f"{v:.6g}" for v in value) + ")"
        return "none" if value is None else f"{value:.6g}"

    return f"the preset's image converter: x * {text(scale)} + {text(offset)} on 0..255 RGB"


def _vision_model(backbone: Any) -> Any:
    """The image part of a keras-hub backbone (an image-text model's vision encoder), as a
    model of one image tensor (keras-hub's take a dict ``{"images": ...}``): the same layers,
    a known transformer's blocks unrolled (:func:`unrolled`)."""
    import keras

    network = getattr(backbone, "vision_encoder", None) or backbone
    flat = unrolled(network)
    if flat is not None:
        return flat
    return keras.Model(network.inputs[0], network.outputs[0], name=network.name)


def unrolled(network: Any) -> Any:
    """``network`` (DINOv2, ViT, CLIP's and SigLIP's vision encoders) as a model whose layers
    are the embedding, each transformer block and the final norm, called in the order its
    encoder calls them, so that a fine-tune strategy unfreezes it block by block; None for
    another network (kept whole). SigLIP's attention-pooling head is left out: its tokens are
    what the host pools."""
    import keras

    kind, layers = type(network).__name__, list(network.layers)
    if kind == "DINOV2Backbone" and len(layers) == 4:
        _, embeddings, encoder, norm = layers
        order = [embeddings, *encoder.layers, norm]
    elif kind == "ViTBackbone" and len(layers) == 3:
        _, embeddings, encoder = layers
        order = [embeddings, encoder.dropout, *encoder.encoder_layers, encoder.layer_norm]
    elif kind == "CLIPVisionEncoder":
        blocks = list(network.encoder_layers)
        order = [network.embedding, network.pre_layer_norm, *blocks, network.layer_norm]
    elif kind == "SigLIPVisionEncoder":
        # the tokens before SigLIP's attention-pooling head (the host pools them instead); the
        # embedding wrapped so that its symbolic shape counts the tokens it gives
        embedding = _patch_tokens_class()(
            network.embedding, name=f"{network.embedding.name}_tokens"
        )
        order = [embedding, *network.encoder_layers, network.post_layer_norm]
    else:
        return None
    inputs = keras.Input(tuple(network.inputs[0].shape[1:]), name="images")
    x = inputs
    for layer in order:
        x = layer(x)
    return keras.Model(inputs, x, name=network.name)


PATCH_TOKENS = "transferkit>PatchTokens"


@functools.cache
def _patch_tokens_class() -> Any:
    """``PatchTokens``: a patch embedding (keras-hub 0.32's ``SigLIPVisionEmbedding``) whose
    symbolic output shape is the ``(N, h/p * w/p, C)`` tokens it gives; keras-hub's declares a
    class token more. Registered with Keras as ``transferkit>PatchTokens``, so a saved model
    holding one reloads (through ``register_keras_objects``)."""
    import keras

    @keras.saving.register_keras_serializable(package="transferkit")
    class PatchTokens(keras.layers.Layer):
        def __init__(self, embedding: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            if isinstance(embedding, dict):
                embedding = keras.saving.deserialize_keras_object(embedding)
            self.embedding = embedding

        def build(self, input_shape: Any) -> None:
            if not self.embedding.built:
                self.embedding.build(input_shape)
            self.built = True

        def call(self, inputs: Any, training: Any = None) -> Any:
            return self.embedding(inputs, training=training)

        def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
            patch = int(self.embedding.patch_size)
            height, width = input_shape[1], input_shape[2]
            if getattr(self.embedding, "data_format", "channels_last") == "channels_first":
                height, width = input_shape[2], input_shape[3]
            tokens = None
            if height is not None and width is not None:
                tokens = (int(height) // patch) * (int(width) // patch)
            return (input_shape[0], tokens, int(self.embedding.hidden_dim))

        def get_config(self) -> dict[str, Any]:
            config = super().get_config()
            config["embedding"] = keras.saving.serialize_keras_object(self.embedding)
            return dict(config)

    return PatchTokens


def token_layout(
    model: Any, size: tuple[int, int], patch: tuple[int, int] | None, config: dict[str, Any]
) -> TokenLayout | None:
    """How ``model``'s token sequence is laid out (None for a feature map)."""
    shape = tuple(model.outputs[0].shape[1:])
    if len(shape) != 2:
        return None
    if patch is None:
        raise UsageError(f"{model.name} gives tokens but its config names no patch size")
    grid = (size[0] // patch[0], size[1] // patch[1])
    prefix = int(shape[0]) - grid[0] * grid[1]
    if prefix < 0:
        raise UsageError(
            f"{model.name} gives {shape[0]} tokens, fewer than its {grid[0]}x{grid[1]} patches"
        )
    class_token = prefix > 0 and bool(config.get("use_class_token", True))
    return TokenLayout(prefix=prefix, grid=grid, class_token=class_token)


def _check_token_count(model: Any, size: tuple[int, int], tokens: TokenLayout, name: str) -> None:
    """One forward pass of a blank image: the tokens a model gives must be those its symbolic
    shape declares (the poolings are cut by that layout)."""
    import numpy as np

    given = int(model(np.zeros((1, *size, 3), "float32"), training=False).shape[1])
    if given != tokens.length:
        raise UsageError(
            f"keras-hub preset {name} ({model.name}) declares {tokens.length} tokens but gives "
            f"{given} (a shape error of this keras-hub version), so its tokens cannot be pooled"
        )


def build(
    preset: str,
    weights: Any = DEFAULT_WEIGHTS,
    input_size: Any = None,
    scale: float | Sequence[float] | None = None,
    offset: float | Sequence[float] | None = None,
) -> Backbone:
    """The keras-hub backbone of ``preset`` (see the module docstring).

    ``weights``: ``"default"`` (the preset's), None (random initialisation) or a weights file
    saved from a backbone of the same preset and input size. ``scale`` and ``offset`` replace
    the preset's image converter (``x * scale + offset`` on 0..255 RGB).
    """
    source = normalise_weights(weights)
    location = _resolve(str(preset))
    import keras_hub
    from keras_hub.src.utils.preset_utils import load_json

    try:
        config = load_json(location, "config.json")["config"]
        scale, offset, converter_size, resize = _converter(location, scale, offset)
    except UsageError:
        raise
    except Exception as exc:
        raise _download_failure(str(preset), exc) from None
    patch = _patch_size(config)
    size = parse_input_size(input_size) or converter_size or _image_shape(config)
    size = tuple(size) if size else (DEFAULT_SIZE, DEFAULT_SIZE)
    _check_size(str(preset), size, patch)
    try:
        network = keras_hub.models.Backbone.from_preset(
            location, load_weights=source == DEFAULT_WEIGHTS, image_shape=(*size, 3)
        )
    except Exception as exc:
        if isinstance(exc, OSError | ConnectionError) or "download" in str(exc).lower():
            raise _download_failure(str(preset), exc) from None
        own = converter_size or _image_shape(config)
        hint = f"; give its own size, --input-size {own[0]}x{own[1]}" if own else ""
        raise UsageError(
            f"keras-hub preset {preset} ({config.get('name', 'backbone')}) cannot be built at "
            f"{size[0]}x{size[1]} ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0].rstrip(':. ')}){hint}"
        ) from None
    model = _vision_model(network)
    if source not in (None, DEFAULT_WEIGHTS):
        load_local_weights(model, model, source)
    tokens = token_layout(model, size, patch, config)
    if tokens is not None:
        _check_token_count(model, size, tokens, str(preset))
    elif len(model.outputs[0].shape) != 4:
        raise UsageError(
            f"keras-hub preset {preset} ({type(network).__name__}) gives outputs of shape "
            f"{tuple(model.outputs[0].shape)}, neither tokens nor a feature map"
        )
    log.debug("keras-hub %s: %s, tokens %s", preset, type(network).__name__, tokens)
    weights_source = (
        f"keras-hub {preset}"
        if source == DEFAULT_WEIGHTS
        else "random"
        if source is None
        else f"file {source}"
    )
    return Backbone(
        name=f"{FAMILY}{preset}",
        model=model,
        preprocess=make_preprocess(scale, offset),
        input_size=size,
        weights_source=weights_source,
        preprocessing=_describe_preprocessing(scale, offset),
        tokens=tokens,
        resize=resize,
        extra={"preset": str(preset), "patch_size": patch, "class": type(network).__name__},
    )


def keras_objects() -> dict[str, Any]:
    """This plugin's own Keras layer (SigLIP's ``PatchTokens``), to pass as ``custom_objects``
    to ``keras.saving.load_model`` on a fine-tuned SigLIP model outside ``load_finetuned``."""
    return {PATCH_TOKENS: _patch_tokens_class()}


@hookimpl
def register_keras_objects(register: Any) -> None:
    # a fine-tuned model.keras holds keras-hub's layers: importing keras-hub registers them all
    # with Keras (called only when a model is loaded)
    try:
        import keras_hub  # noqa: F401
    except ImportError:  # keras-hub not installed: no model can hold its layers
        return
    # SigLIP's embedding, wrapped (defined only when a model being loaded holds one)
    register(_patch_tokens_class, name=PATCH_TOKENS)


@hookimpl
def register_backbones(register: Any) -> None:
    register(
        BackboneSpec(
            name=FAMILY,
            description="a keras-hub image backbone: keras-hub:<preset, hf:// handle or folder>",
            factory=build,
            input_size=(DEFAULT_SIZE, DEFAULT_SIZE),
            preprocessing="the preset's image converter (scale and offset)",
            weights="the preset's own (keras-hub cache; a local preset folder works offline)",
            metadata={"parameter": "preset", "example": "keras-hub:/models/dinov2_small"},
        )
    )
    for name, preset in image_presets().items():
        register(
            BackboneSpec(
                name=f"{FAMILY}{name}",
                description=preset["description"],
                factory=functools.partial(build, name),
                input_size=preset["input_size"],
                preprocessing="the preset's image converter (scale and offset)",
                weights=f"keras-hub {preset['family']} preset ({preset['handle']})",
                metadata={
                    "family": preset["family"],
                    "param_count": preset["params"],
                    "handle": preset["handle"],
                    "offline": "cached" if is_cached(preset["handle"]) else "download",
                },
            )
        )
