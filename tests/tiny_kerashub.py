"""Tiny keras-hub presets saved offline (seeded), for the tests of ``keras-hub:<folder>``.

``save_presets(root)`` writes one preset folder per name below, each with its image converter
(``no-converter`` without one), and returns name -> folder. They build in a few seconds.
"""

from __future__ import annotations

from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALE = [1 / (255 * s) for s in IMAGENET_STD]
OFFSET = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
SIZES = {"dinov2": 56, "dinov2-registers": 56, "vit": 32, "resnet": 32, "no-converter": 32}
WIDTHS = {"dinov2": 32, "dinov2-registers": 32, "vit": 16, "resnet": 32, "no-converter": 16}


def _networks() -> dict[str, tuple[object, object | None]]:
    import keras
    import keras_hub

    keras.utils.set_random_seed(3)
    dino = {"patch_size": 14, "num_layers": 2, "hidden_dim": 32, "num_heads": 2}
    dino.update(intermediate_dim=64, image_shape=(56, 56, 3), position_embedding_shape=(56, 56, 3))
    vit = {"image_shape": (32, 32, 3), "patch_size": 8, "num_layers": 2, "num_heads": 2}
    vit.update(hidden_dim=16, mlp_dim=32)
    converters = keras_hub.layers
    return {
        "dinov2": (
            keras_hub.models.DINOV2Backbone(**dino),
            converters.DINOV2ImageConverter(image_size=(56, 56), scale=SCALE, offset=OFFSET),
        ),
        "dinov2-registers": (
            keras_hub.models.DINOV2Backbone(**dino, num_register_tokens=4),
            converters.DINOV2ImageConverter(image_size=(56, 56), scale=SCALE, offset=OFFSET),
        ),
        "vit": (
            keras_hub.models.ViTBackbone(**vit),
            converters.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0),
        ),
        "resnet": (
            keras_hub.models.ResNetBackbone(
                input_conv_filters=[64],
                input_conv_kernel_sizes=[3],
                stackwise_num_filters=[64, 32],
                stackwise_num_blocks=[1, 1],
                stackwise_num_strides=[1, 2],
                block_type="basic_block",
                image_shape=(32, 32, 3),
            ),
            converters.ResNetImageConverter(image_size=(32, 32), scale=SCALE, offset=OFFSET),
        ),
        "no-converter": (keras_hub.models.ViTBackbone(**vit), None),
    }


def save_presets(root: Path) -> dict[str, Path]:
    folders = {}
    for name, (backbone, converter) in _networks().items():
        folder = root / name
        backbone.save_to_preset(str(folder))  # type: ignore[attr-defined]
        if converter is not None:
            converter.save_to_preset(str(folder))  # type: ignore[attr-defined]
        folders[name] = folder
    return folders
