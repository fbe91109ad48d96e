"""Every ``keras.applications`` image network as a backbone, without its classification top.

Names are the Keras class names lower-cased with dashes: ``vgg16``, ``resnet50-v2``,
``mobilenet-v2``, ``mobilenet-v3-small``, ``efficientnet-b0``, ``efficientnet-v2-s``,
``convnext-tiny``, ``nasnet-large``... Each backbone uses its own module's ``preprocess_input`` and
default input size. Networks whose preprocessing is part of the graph (EfficientNet, EfficientNetV2,
ConvNeXt, MobileNetV3) take raw 0..255 pixels: their ``preprocess`` is the identity.

What a backbone reports before it is built (input size, the shape of its last feature map at the
default input size, hence the width of each pooling, parameter count) comes from :data:`TABLE`,
generated once by ``docs/tools/backbone_table.py`` (it builds each network with ``weights=None``
and reads the output shapes), so listing backbones never imports TensorFlow.

``weights``: ``"default"``/``"imagenet"`` downloads the ImageNet weights into the Keras cache
(``$KERAS_HOME``, default ``~/.keras``); ``None``/``"none"`` is random initialisation; a path
loads a local weights file (a ``.weights.h5`` saved from a backbone's model, or the
``..._notop.h5`` file Keras would download).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transferkit import Backbone, BackboneSpec, WeightsUnavailableError, hookimpl
from transferkit.plugin import DEFAULT_WEIGHTS, normalise_weights, parse_input_size
from transferkit.plugins._backbone_utils import (
    OFFLINE_HINT,
    is_download_failure,
    load_local_weights,
)

# How each preprocess mode of keras.applications.imagenet_utils transforms 0..255 RGB input.
PREPROCESSING = {
    "caffe": "RGB to BGR, then subtract the ImageNet channel means (caffe mode)",
    "tf": "scale to [-1, 1]: x / 127.5 - 1 (tf mode)",
    "torch": "scale to [0, 1], then normalise with the ImageNet mean and std (torch mode)",
    "in-graph": "none outside the model: the network rescales 0..255 input itself (in-graph)",
}


@dataclass(frozen=True)
class _Net:
    name: str
    cls: str  # keras.applications class name
    module: str  # keras.applications module holding its preprocess_input
    mode: str  # a key of PREPROCESSING
    input_size: int


_NETS: tuple[_Net, ...] = (
    _Net("vgg16", "VGG16", "vgg16", "caffe", 224),
    _Net("vgg19", "VGG19", "vgg19", "caffe", 224),
    _Net("xception", "Xception", "xception", "tf", 299),
    _Net("resnet50", "ResNet50", "resnet", "caffe", 224),
    _Net("resnet101", "ResNet101", "resnet", "caffe", 224),
    _Net("resnet152", "ResNet152", "resnet", "caffe", 224),
    _Net("resnet50-v2", "ResNet50V2", "resnet_v2", "tf", 224),
    _Net("resnet101-v2", "ResNet101V2", "resnet_v2", "tf", 224),
    _Net("resnet152-v2", "ResNet152V2", "resnet_v2", "tf", 224),
    _Net("inception-v3", "InceptionV3", "inception_v3", "tf", 299),
    _Net("inception-resnet-v2", "InceptionResNetV2", "inception_resnet_v2", "tf", 299),
    _Net("mobilenet", "MobileNet", "mobilenet", "tf", 224),
    _Net("mobilenet-v2", "MobileNetV2", "mobilenet_v2", "tf", 224),
    _Net("mobilenet-v3-small", "MobileNetV3Small", "mobilenet_v3", "in-graph", 224),
    _Net("mobilenet-v3-large", "MobileNetV3Large", "mobilenet_v3", "in-graph", 224),
    _Net("densenet121", "DenseNet121", "densenet", "torch", 224),
    _Net("densenet169", "DenseNet169", "densenet", "torch", 224),
    _Net("densenet201", "DenseNet201", "densenet", "torch", 224),
    _Net("nasnet-mobile", "NASNetMobile", "nasnet", "tf", 224),
    _Net("nasnet-large", "NASNetLarge", "nasnet", "tf", 331),
    *(
        _Net(f"efficientnet-b{i}", f"EfficientNetB{i}", "efficientnet", "in-graph", size)
        for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))
    ),
    *(
        _Net(f"efficientnet-v2-{v.lower()}", f"EfficientNetV2{v}", "efficientnet_v2", "in-graph", s)
        for v, s in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300))
        + (("S", 384), ("M", 480), ("L", 480))
    ),
    *(
        _Net(f"convnext-{v.lower()}", f"ConvNeXt{v}", "convnext", "in-graph", 224)
        for v in ("Tiny", "Small", "Base", "Large", "XLarge")
    ),
)

NETS: dict[str, _Net] = {net.name: net for net in _NETS}

# BEGIN GENERATED TABLE (docs/tools/backbone_table.py; do not edit by hand)
# name: (feature map (h, w, channels) at the default input size, parameter count without the top)
TABLE: dict[str, tuple[tuple[int, int, int], int]] = {
    "vgg16": ((7, 7, 512), 14714688),
    "vgg19": ((7, 7, 512), 20024384),
    "xception": ((10, 10, 2048), 20861480),
    "resnet50": ((7, 7, 2048), 23587712),
    "resnet101": ((7, 7, 2048), 42658176),
    "resnet152": ((7, 7, 2048), 58370944),
    "resnet50-v2": ((7, 7, 2048), 23564800),
    "resnet101-v2": ((7, 7, 2048), 42626560),
    "resnet152-v2": ((7, 7, 2048), 58331648),
    "inception-v3": ((8, 8, 2048), 21802784),
    "inception-resnet-v2": ((8, 8, 1536), 54336736),
    "mobilenet": ((7, 7, 1024), 3228864),
    "mobilenet-v2": ((7, 7, 1280), 2257984),
    "mobilenet-v3-small": ((7, 7, 576), 939120),
    "mobilenet-v3-large": ((7, 7, 960), 2996352),
    "densenet121": ((7, 7, 1024), 7037504),
    "densenet169": ((7, 7, 1664), 12642880),
    "densenet201": ((7, 7, 1920), 18321984),
    "nasnet-mobile": ((7, 7, 1056), 4269716),
    "nasnet-large": ((11, 11, 4032), 84916818),
    "efficientnet-b0": ((7, 7, 1280), 4049571),
    "efficientnet-b1": ((8, 8, 1280), 6575239),
    "efficientnet-b2": ((9, 9, 1408), 7768569),
    "efficientnet-b3": ((10, 10, 1536), 10783535),
    "efficientnet-b4": ((12, 12, 1792), 17673823),
    "efficientnet-b5": ((15, 15, 2048), 28513527),
    "efficientnet-b6": ((17, 17, 2304), 40960143),
    "efficientnet-b7": ((19, 19, 2560), 64097687),
    "efficientnet-v2-b0": ((7, 7, 1280), 5919312),
    "efficientnet-v2-b1": ((8, 8, 1280), 6931124),
    "efficientnet-v2-b2": ((9, 9, 1408), 8769374),
    "efficientnet-v2-b3": ((10, 10, 1536), 12930622),
    "efficientnet-v2-s": ((12, 12, 1280), 20331360),
    "efficientnet-v2-m": ((15, 15, 1280), 53150388),
    "efficientnet-v2-l": ((15, 15, 1280), 117746848),
    "convnext-tiny": ((7, 7, 768), 27820128),
    "convnext-small": ((7, 7, 768), 49454688),
    "convnext-base": ((7, 7, 1024), 87566464),
    "convnext-large": ((7, 7, 1536), 196230336),
    "convnext-xlarge": ((7, 7, 2048), 348147968),
}
# END GENERATED TABLE


def _make_preprocess(module_name: str, mode: str) -> Any:
    if mode == "in-graph":

        def identity(x: Any) -> Any:
            import tensorflow as tf

            return tf.cast(x, tf.float32)

        return identity

    def preprocess(x: Any) -> Any:
        import keras
        import tensorflow as tf

        module = getattr(keras.applications, module_name)
        # Converting to a tensor first takes the tensor path of preprocess_input: traceable inside
        # tf.data, and it never modifies a caller's NumPy array in place.
        return module.preprocess_input(tf.cast(tf.convert_to_tensor(x), tf.float32))

    preprocess.__name__ = f"{module_name}_preprocess_input"
    return preprocess


def build(name: str, weights: Any = "default", input_size: Any = None) -> Backbone:
    """Build the ``keras.applications`` backbone called ``name`` up to its last feature map; see
    the module docstring."""
    net = NETS[name]
    # these networks need at least 32 pixels a side
    size = parse_input_size(input_size, minimum=32) or (net.input_size, net.input_size)
    source = normalise_weights(weights)

    import keras

    constructor = getattr(keras.applications, net.cls)
    kwargs: dict[str, Any] = {"include_top": False, "input_shape": (*size, 3)}
    try:
        base = constructor(weights="imagenet" if source == DEFAULT_WEIGHTS else None, **kwargs)
    except Exception as exc:
        if source == DEFAULT_WEIGHTS and is_download_failure(exc):
            raise WeightsUnavailableError(
                f"cannot download the ImageNet weights of {name} (no internet?); {OFFLINE_HINT}."
            ) from None
        raise
    if source not in (None, DEFAULT_WEIGHTS):
        assert source is not None
        load_local_weights(base, base, source)
    weights_source = {
        None: "random initialisation",
        DEFAULT_WEIGHTS: "imagenet (keras.applications, Keras cache)",
    }.get(source, f"file {source}")
    return Backbone(
        name=name,
        model=base,
        preprocess=_make_preprocess(net.module, net.mode),
        input_size=size,
        weights_source=weights_source,
        preprocessing=f"{net.module}.preprocess_input: {PREPROCESSING[net.mode]}",
        extra={"keras_class": net.cls},
    )


def _factory(name: str) -> Any:
    def factory(weights: Any = "default", input_size: Any = None) -> Backbone:
        return build(name, weights=weights, input_size=input_size)

    factory.__name__ = factory.__qualname__ = f"build_{name.replace('-', '_')}"
    factory.__doc__ = f"keras.applications.{NETS[name].cls} without its top, as a backbone."
    return factory


# Index of the first layer fine-tuning unfreezes (warmup-unfreeze's phase 2, the start of
# gradual's), where the recipes name one: VGG16 15 (block5, the classic recipe), VGG19 17
# (block5), MobileNetV2 100 and InceptionV3 249 (the Keras guides).
UNFREEZE_FROM = {"vgg16": 15, "vgg19": 17, "mobilenet-v2": 100, "inception-v3": 249}


@hookimpl
def register_backbones(register: Any) -> None:
    for net in _NETS:
        params = TABLE[net.name][1] if net.name in TABLE else None
        register(
            BackboneSpec(
                name=net.name,
                description=f"keras.applications.{net.cls} (ImageNet), {net.input_size} px",
                factory=_factory(net.name),
                input_size=(net.input_size, net.input_size),
                preprocessing=f"{net.module}.preprocess_input: {PREPROCESSING[net.mode]}",
                feature_map=TABLE[net.name][0] if net.name in TABLE else None,
                weights="imagenet (downloaded into the Keras cache)",
                metadata={
                    "keras_class": net.cls,
                    "param_count": params,
                    **(
                        {"unfreeze_from": UNFREEZE_FROM[net.name]}
                        if net.name in UNFREEZE_FROM
                        else {}
                    ),
                },
            )
        )
