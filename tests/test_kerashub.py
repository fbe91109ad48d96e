"""keras-hub backbones on tiny presets these tests save offline (tests/tiny_kerashub.py): token
poolings, preprocessing from the preset's converter, features equal to keras-hub's own
converter + backbone, and the refusals (no converter, a size off the patch grid, a download)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_faults import invoke_cli, python_output
from imagefiles import photo
from PIL import Image
from tiny_kerashub import SIZES, WIDTHS, save_presets

import transferkit
from transferkit import UsageError, WeightsUnavailableError, pool, registry
from transferkit.recipe import FeatureRecipe
from transferkit.store import open_store

TOKEN_POOLINGS = ("cls", "mean", "cls+mean", "avg", "max", "flatten")


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_presets(tmp_path_factory.mktemp("presets"))


def _photos(folder: Path, size: int) -> Path:
    """Lossless PNGs at the preset's own size (the resize is then exact in both pipelines)."""
    for c, name in enumerate(("cat", "rocket")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, source in enumerate(("astronaut", "coffee", "chelsea")[: 2 + c]):
            photo(source, (size, size)).save(folder / name / f"{name}_{i}.png")
    return folder


def _reference(preset: Path, images: np.ndarray) -> np.ndarray:
    """keras-hub's own converter + backbone on 0..255 RGB images."""
    import keras_hub

    converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
    network = keras_hub.models.Backbone.from_preset(str(preset))
    with warnings.catch_warnings():  # a tensor where it names its input {"images": ...}
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(network(converter(images)))


def _expected(outputs: np.ndarray, pooling: str, prefix: int) -> np.ndarray:
    if outputs.ndim == 4:  # a feature map
        n, h, w, c = outputs.shape
        patches = outputs.reshape(n, h * w, c)
    else:
        patches = outputs[:, prefix:]
    mean = patches.mean(axis=1)
    return {
        "cls": lambda: outputs[:, 0],
        "mean": lambda: mean,
        "cls+mean": lambda: np.concatenate([outputs[:, 0], mean], axis=1),
        "avg": lambda: mean,
        "max": lambda: patches.max(axis=1),
        "flatten": lambda: patches.reshape(len(patches), -1),
    }[pooling]()


def _close_per_row(got: np.ndarray, want: np.ndarray) -> float:
    """The largest relative error of a row (norm of the difference / norm of the row)."""
    assert got.shape == want.shape
    errors = np.linalg.norm(got - want, axis=1) / np.maximum(np.linalg.norm(want, axis=1), 1e-12)
    return float(errors.max())


@pytest.mark.parametrize(
    ("name", "prefix"), [("dinov2", 1), ("dinov2-registers", 5), ("vit", 1), ("resnet", 0)]
)
def test_features_equal_keras_hubs_converter_and_backbone(
    presets: dict[str, Path], tmp_path: Path, name: str, prefix: int
) -> None:
    size = SIZES[name]
    backbone = registry.backbone(f"keras-hub:{presets[name]}").factory()
    poolings = backbone.poolings
    if name == "resnet":
        assert backbone.tokens is None and poolings == ("avg", "max", "flatten")
    else:
        assert backbone.tokens is not None and backbone.tokens.prefix == prefix
        assert backbone.tokens.grid == (size // backbone.extra["patch_size"][0],) * 2
        assert poolings == ("avg", "max", "flatten", "cls", "mean", "cls+mean")
    # the widths are known before any image: from the model's symbolic output
    width = WIDTHS[name]
    dims = backbone.feature_dims
    assert dims["avg"] == dims["max"] == width
    if name != "resnet":
        assert dims["cls"] == dims["mean"] == width and dims["cls+mean"] == 2 * width

    folder = _photos(tmp_path / "photos", size)
    outs = {p: tmp_path / f"{p.replace('+', '_')}.h5" for p in poolings}
    transferkit.extract_many(folder, backbone=f"keras-hub:{presets[name]}", outs=outs)
    with open_store(outs[poolings[0]]) as store:
        paths = store.paths
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    reference = _reference(presets[name], images)
    for pooling in poolings:
        with open_store(outs[pooling]) as store:
            rows, _ = store.read()
            assert store.metadata["pooling"] == pooling
        assert rows.shape[1] == dims[pooling]
        assert _close_per_row(rows, _expected(reference, pooling, prefix)) < 1e-4, pooling


def _photos_of_other_sizes(folder: Path, prefix: str = "") -> Path:
    """Whole photographs of other sizes and aspect ratios than the input, as JPEG and PNG."""
    import skimage.data

    for c, name in enumerate(("cat", "rocket")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, source in enumerate((("chelsea", "astronaut"), ("coffee", "rocket"))[c]):
            image = Image.fromarray(getattr(skimage.data, source)()).convert("RGB")
            if i == 1:
                image = image.crop((0, 0, image.width, image.height * 2 // 3))  # wide
            image.save(folder / name / f"{prefix}{name}_{i}.jpg", quality=90)
            rotated = image.transpose(Image.Transpose.TRANSPOSE)
            rotated.save(folder / name / f"{prefix}{name}_{i}.png")
    return folder


@pytest.mark.parametrize("name", ["dinov2-registers", "vit"])
def test_other_sizes_resize_as_keras_hubs_converter(
    presets: dict[str, Path], tmp_path: Path, name: str
) -> None:
    from transferkit.specs import Resize

    backbone = registry.backbone(f"keras-hub:{presets[name]}").factory()
    # the converter's own resize: bilinear, no antialias, the centre at the input's aspect ratio
    assert backbone.resize == Resize("bilinear", crop_to_aspect_ratio=True)
    folder = _photos_of_other_sizes(tmp_path / "photos")
    out = tmp_path / "f.h5"
    transferkit.extract(folder, out=out, backbone=f"keras-hub:{presets[name]}", pooling="cls+mean")
    with open_store(out) as store:
        rows, _ = store.read()
        paths = store.paths
        assert store.metadata["resize"] == backbone.resize.describe()
    assert len(paths) == 8
    prefix = backbone.tokens.prefix if backbone.tokens is not None else 0
    for path, row in zip(paths, rows, strict=True):
        image = np.asarray(Image.open(path).convert("RGB"), np.float32)
        assert image.shape[:2] != (SIZES[name], SIZES[name])
        want = _expected(_reference(presets[name], image[None]), "cls+mean", prefix)
        assert _close_per_row(row[None], want) < 1e-4, path
    if name != "vit":
        return
    # prediction makes the same features, with the same resize
    from transferkit.jobs.predict import extract_features
    from transferkit.models import load_model

    trained = transferkit.train(out, classifier="logistic-regression", out=tmp_path / "model")
    again, kept = extract_features(load_model(trained["model_path"]), list(paths))
    assert list(kept) == list(range(len(paths)))
    assert _close_per_row(again, rows) < 1e-5


def test_fine_tune_data_resizes_as_the_backbone(presets: dict[str, Path], tmp_path: Path) -> None:
    import tensorflow as tf

    from transferkit.pipeline import resize_image
    from transferkit.trainer.data import ArrayDataModule, ImageDataModule

    backbone = registry.backbone(f"keras-hub:{presets['vit']}").factory()
    folder = _photos_of_other_sizes(tmp_path / "photos")
    files = ImageDataModule(folder, batch_size=8, fractions=(0.5, 0.5))
    files.setup(preprocess=None, input_size=backbone.input_size, resize=backbone.resize)
    paths = [files.source.paths[i] for i in files.val_indices]
    got = np.concatenate([np.asarray(x) for x, _ in files.val_dataset()])
    for path, image in zip(paths, got, strict=True):
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
        want = np.asarray(_converter_resize(presets["vit"], pixels))
        np.testing.assert_allclose(image, want, atol=1e-3, err_msg=path)
    wide = np.random.default_rng(0).uniform(0, 255, (4, 40, 64, 3)).astype(np.float32)
    arrays = ArrayDataModule(wide, [0, 1, 0, 1], batch_size=4, fractions=(0.5, 0.5))
    arrays.setup(preprocess=None, input_size=backbone.input_size, resize=backbone.resize)
    got = np.concatenate([np.asarray(x) for x, _ in arrays.val_dataset()])
    want = resize_image(tf.constant(wide[arrays.val_indices]), (32, 32), backbone.resize)
    np.testing.assert_array_equal(got, np.asarray(want))
    np.testing.assert_allclose(got, _converter_resize(presets["vit"], wide[arrays.val_indices]))


def _converter_resize(preset: Path, images: np.ndarray) -> np.ndarray:
    """keras-hub's converter's resize alone (its scale and offset undone)."""
    import keras_hub

    converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
    return np.asarray(converter.resizing(images))


def test_an_existing_backbones_resize_is_unchanged() -> None:
    from transferkit.specs import Resize

    backbone = registry.backbone("efficientnet-lite0").factory(weights=None)
    assert backbone.resize == Resize() and backbone.resize.scaled_jpeg
    assert "resize" not in backbone.describe()


def test_registers_are_left_out_of_the_mean(presets: dict[str, Path]) -> None:
    backbone = registry.backbone(f"keras-hub:{presets['dinov2-registers']}").factory()
    tokens = np.random.RandomState(0).normal(size=(2, 21, 32)).astype("float32")
    tokens[:, 1:5] = 1e6  # registers, which no pooling may see
    pooled = pool(backbone, ["cls", "mean", "max"])
    # the pooling layers alone, on chosen tokens
    import keras

    head = keras.Model(pooled.model.get_layer("patch_tokens").input, pooled.model.output)
    rows = np.asarray(head(tokens))
    np.testing.assert_allclose(rows[:, :32], tokens[:, 0], rtol=1e-6)
    np.testing.assert_allclose(rows[:, 32:64], tokens[:, 5:].mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(rows[:, 64:], tokens[:, 5:].max(axis=1), rtol=1e-6)


def test_cli_extract_cls_mean_from_a_local_preset(presets: dict[str, Path], tmp_path: Path) -> None:
    folder = _photos(tmp_path / "photos", 56)
    out = tmp_path / "f.h5"
    backbone = f"keras-hub:{presets['dinov2']}"
    result = invoke_cli("extract", folder, "-b", backbone, "--pooling", "cls+mean", "-o", out)
    assert result.returncode == 0, result.stderr
    with open_store(out) as store:
        assert store.feature_dim == 64 and len(store) == 5
        meta = store.metadata
    assert meta["pooling"] == "cls+mean" and meta["backbone"] == backbone
    assert meta["tokens"] == {"prefix": 1, "grid": [4, 4], "class_token": True}
    assert FeatureRecipe.from_metadata(meta).pooling == "cls+mean"


def test_recipe_text_takes_token_poolings_and_sizes(presets: dict[str, Path]) -> None:
    recipe = FeatureRecipe.parse(f"keras-hub:{presets['dinov2']}@84:cls+mean")
    assert recipe.backbone == f"keras-hub:{presets['dinov2']}"
    assert recipe.input_size == (84, 84) and recipe.pooling == "cls+mean"
    # DINOv2 interpolates its position embeddings: another size, another patch grid
    built = registry.backbone(recipe.backbone).factory(input_size=recipe.input_size)
    assert built.tokens is not None and built.tokens.grid == (6, 6)
    assert pool(built, "cls+mean").feature_dim == 64
    # ViT's are fixed: its own size only, said in one line
    with pytest.raises(UsageError, match="cannot be built at 64x64.*--input-size 32x32") as caught:
        registry.backbone(f"keras-hub:{presets['vit']}").factory(input_size=64)
    assert "\n" not in str(caught.value)


def test_refusals_are_one_line(presets: dict[str, Path]) -> None:
    spec = registry.backbone(f"keras-hub:{presets['vit']}")
    with pytest.raises(UsageError, match="not a multiple of the patch size 8x8") as caught:
        spec.factory(input_size=(36, 36))
    assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="has no image converter") as caught:
        registry.backbone(f"keras-hub:{presets['no-converter']}").factory()
    assert "save_to_preset" in str(caught.value)
    resnet = registry.backbone(f"keras-hub:{presets['resnet']}").factory()
    with pytest.raises(UsageError, match="gives a feature map, whose poolings are avg, max"):
        pool(resnet, "cls")
    with pytest.raises(UsageError, match="does not exist"):
        registry.backbone(f"keras-hub:{presets['vit']}/missing").factory()


def test_a_named_preset_without_internet_fails_in_one_sentence() -> None:
    with pytest.raises(WeightsUnavailableError) as caught:
        registry.backbone("keras-hub:dinov2_small").factory()
    message = str(caught.value)
    assert "\n" not in message and "local preset folder" in message
    assert "efficientnet-lite0" in message


def _fake_cache(root: Path, preset: Path | None = None) -> Path:
    """A kagglehub cache holding keras-hub's dinov2_small preset: ``preset``'s files (a
    ``config.json`` alone without one), each marked complete as kagglehub marks them."""
    import shutil

    from transferkit.plugins import kerashub

    handle = kerashub.image_presets()["dinov2_small"]["handle"]
    assert handle.startswith("kaggle://keras/dinov2/")
    cache = root / "kagglehub"
    target = cache / "models" / Path(*handle[len("kaggle://") :].split("/"))
    if preset is None:
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
    else:
        shutil.copytree(preset, target)
    markers = target.parent / ".complete" / target.name
    markers.mkdir(parents=True)
    for file in target.iterdir():
        (markers / f"{file.name}.complete").touch()
    return cache


def test_listing_names_families_sizes_and_what_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(_fake_cache(tmp_path)))
    result = invoke_cli("backbones", "keras-hub*", "--json")
    assert result.returncode == 0, result.stderr
    import json

    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert len(rows) > 100 and "keras-hub:" in rows
    small = rows["keras-hub:dinov2_small"]
    assert small["offline"] == "cached" and small["metadata"]["family"] == "dinov2"
    assert small["metadata"]["param_count"] == 22_582_656 and small["input_size"] == [224, 224]
    assert rows["keras-hub:dinov2_base"]["offline"] == "download"
    assert rows["keras-hub:siglip2_base_patch16_384"]["input_size"] == [384, 384]
    assert rows["keras-hub:densenet_121_imagenet"]["input_size"] == [224, 224]
    for family in ("dinov2", "dinov3", "siglip", "clip", "vit", "efficientnet", "resnet"):
        assert any(r.get("metadata", {}).get("family") == family for r in rows.values()), family
    table = invoke_cli("backbones", "keras-hub:dinov2*")
    assert table.returncode == 0 and "cached" in table.stdout and "download" in table.stdout


@pytest.mark.process
def test_listing_imports_no_tensorflow_and_opens_no_socket(tmp_path: Path) -> None:
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('no network in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from transferkit import registry\n"
        "specs = registry.all_specs('backbone')\n"
        "rows = [s.describe() for n, s in specs.items() if n.startswith('keras-hub:')]\n"
        "assert len(rows) > 100, len(rows)\n"
        "assert specs['keras-hub:dinov2_small'].metadata['offline'] == 'cached'\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'keras_hub', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "KAGGLEHUB_CACHE": str(_fake_cache(tmp_path))}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


def test_a_cached_preset_builds_without_internet(
    presets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(_fake_cache(tmp_path, presets["dinov2"])))
    backbone = registry.backbone("keras-hub:dinov2_small").factory()
    assert backbone.tokens is not None and backbone.weights_source == "keras-hub dinov2_small"
    assert pool(backbone, "cls+mean").feature_dim == 64


@pytest.mark.slow  # converts two networks with each converting runtime (~15 s)
@pytest.mark.parametrize("runtime", ["openvino", "litert"])
def test_runtimes_match_keras_per_row(
    presets: dict[str, Path], tmp_path: Path, runtime: str
) -> None:
    from transferkit import inference

    for name, poolings in (("dinov2-registers", ["cls+mean", "max"]), ("resnet", ["avg"])):
        backbone = registry.backbone(f"keras-hub:{presets[name]}").factory()
        net = pool(backbone, poolings)
        pixels = np.random.default_rng(0).uniform(0, 255, (7, *backbone.input_size, 3))
        x = np.asarray(backbone.preprocess(pixels.astype(np.float32)), dtype=np.float32)
        want = np.asarray(net.model(x, training=False), dtype=np.float32)
        forward = inference.build_forward(
            net, backbone=name, runtime=runtime, precision="32", batch_size=4, cache_dir=tmp_path
        )
        assert forward.runtime == runtime
        got = np.concatenate([forward(x[:4]), forward(x[4:])])
        assert _close_per_row(got, want) <= 1e-4, (name, _close_per_row(got, want))


@pytest.mark.slow  # ~10 s
@pytest.mark.process  # the spot-check's worker processes
def test_spotcheck_and_predict_with_a_local_preset(
    presets: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    for c, name in enumerate(("cat", "rocket")):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            source = ("chelsea", "coffee")[c] if i % 3 else ("astronaut", "rocket")[c]
            photo(source, (56 + 4 * i, 56)).save(folder / name / f"{name}_{i}.png")
    backbone = f"keras-hub:{presets['dinov2']}@56:cls+mean"
    report = transferkit.spotcheck(
        [str(folder)],
        backbones=[backbone],
        classifiers="logistic-regression",
        cache_dir=tmp_path / "cache",
        jobs=1,
        progress=False,
    )
    assert [r["status"] for r in report["rows"]] == ["ok"]
    store = report["features"][0]["store"]
    with open_store(store) as features:
        assert features.feature_dim == 64 and features.metadata["pooling"] == "cls+mean"
    trained = transferkit.train(store, classifier="logistic-regression", out=tmp_path / "model")
    result = transferkit.predict(trained["model_path"], sorted(folder.glob("*/*.png"))[:3])
    assert result["backbone"] == f"keras-hub:{presets['dinov2']}"
    assert [r["status"] for r in result["predictions"]] == ["ok"] * 3


def test_strategies_see_transformer_blocks_and_cnn_stages(presets: dict[str, Path]) -> None:
    from transferkit.plugin import trainable_blocks

    def blocks(name: str) -> list[str]:
        built = registry.backbone(f"keras-hub:{presets[name]}").factory()
        return [block for block, _, _ in trainable_blocks(built.model.layers)]

    assert blocks("dinov2") == ["stem", "layers_0", "layers_1"]
    assert blocks("vit") == ["stem", "block_1", "block_2"]
    assert blocks("resnet") == ["conv1", "stack0", "stack1"]


def _trainable_per_phase(register_plugin: Any) -> dict[str, int]:
    """A plugin noting the base's trainable weights at the end of each phase's epochs."""
    from transferkit import hookimpl

    seen: dict[str, int] = {}

    class Count:
        @hookimpl
        def on_epoch_end(self, trainer: Any, phase: str) -> None:
            seen[phase] = len(trainer.model.base.trainable_weights)

    register_plugin(Count(), "count-trainable")
    return seen


@pytest.mark.slow  # a fine-tune of a tiny DINOv2 in four phases (~20 s)
@pytest.mark.process  # the saved model, loaded in a fresh process
def test_finetune_unfreezes_transformer_blocks_and_the_model_reloads(
    presets: dict[str, Path], tmp_path: Path, register_plugin: Any
) -> None:
    folder = tmp_path / "photos"
    for c, name in enumerate(("cat", "rocket")):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            photo(("chelsea", "rocket")[c], (56 + 4 * i, 56)).save(folder / name / f"{i}.png")
    seen = _trainable_per_phase(register_plugin)
    backbone = f"keras-hub:{presets['dinov2-registers']}"
    built = registry.backbone(backbone).factory()
    names = [layer.name for layer in built.model.layers]
    assert names[2:4] == ["layers_0", "layers_1"]  # the blocks, unrolled
    counts = [len(layer.trainable_weights) for layer in built.model.layers]
    stem, first, last, norm = sum(counts[:2]), counts[2], counts[3], counts[4]
    result = transferkit.finetune(
        folder,
        backbone=backbone,
        out=tmp_path / "dino",
        strategy="gradual",
        epochs=[1, 1],
        batch_size=4,
        split=(0.5, 0.25, 0.25),
        progress=False,
    )
    # gradual: the head alone, then the last block (with the final norm after it), the block
    # before it, and the stem (the patch and position embeddings)
    assert seen == {
        "head": 0,
        "unfreeze-1": last + norm,
        "unfreeze-2": first + last + norm,
        "unfreeze-3": stem + first + last + norm,
    }, seen
    model = transferkit.load_finetuned(result["model_path"])
    assert model.metadata["preprocess_in_model"]  # the converter's affine map, in the file
    images = np.stack([np.asarray(photo(n, (56, 56)), np.float32) for n in ("chelsea", "rocket")])
    probabilities = np.asarray(model.predict_proba(images))
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # a receiver needs keras and keras_hub only (keras-hub's layers register on import)
    code = (
        "import keras, keras_hub, numpy as np\n"
        f"model = keras.saving.load_model({str(result['model_path'])!r})\n"
        "print(model.predict(np.zeros((1, 56, 56, 3), 'float32'), verbose=0).shape)\n"
    )
    assert python_output(code).strip().splitlines()[-1] == "(1, 2)"


def test_clip_vision_encoder_gives_tokens(tmp_path: Path) -> None:
    import keras
    import keras_hub

    from transferkit.plugins import kerashub

    keras.utils.set_random_seed(5)
    shape = {"patch_size": 8, "hidden_dim": 16, "num_layers": 2, "num_heads": 2}
    shape.update(intermediate_dim=32, image_shape=(32, 32, 3))
    clip = keras_hub.models.CLIPVisionEncoder(**shape)
    clip.save_to_preset(str(tmp_path / "clip"))
    built = kerashub.build(str(tmp_path / "clip"), scale=1 / 127.5, offset=-1.0)
    assert built.tokens is not None and (built.tokens.prefix, built.tokens.grid) == (1, (4, 4))
    from transferkit.plugin import trainable_blocks

    assert [b[0] for b in trainable_blocks(built.model.layers)] == ["stem", "block_0", "block_1"]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    x = np.asarray(built.preprocess(pixels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        want = np.asarray(clip(x))
    got = np.asarray(pool(built, "cls+mean").model(x))
    expected = np.concatenate([want[:, 0], want[:, 1:].mean(axis=1)], axis=1)
    assert _close_per_row(got, expected) < 1e-5


SIGLIP = {"patch_size": 8, "hidden_dim": 16, "num_layers": 2, "num_heads": 2}
SIGLIP.update(intermediate_dim=32, image_shape=(32, 32, 3))


def _siglip_preset(folder: Path) -> Any:
    """A tiny SigLIP vision encoder saved as a preset, with its converter; the encoder."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(7)
    encoder = keras_hub.models.SigLIPVisionEncoder(**SIGLIP)
    encoder.save_to_preset(str(folder))
    converter = keras_hub.layers.SigLIPImageConverter(
        image_size=(32, 32), scale=1 / 127.5, offset=-1.0
    )
    converter.save_to_preset(str(folder))
    return encoder


def _siglip_tokens(encoder: Any, x: np.ndarray) -> np.ndarray:
    """keras-hub's SigLIP encoder's tokens before its attention-pooling head."""
    for layer in (encoder.embedding, *encoder.encoder_layers, encoder.post_layer_norm):
        x = layer(x)
    return np.asarray(x)


def test_siglip_gives_its_patch_tokens(tmp_path: Path) -> None:
    import keras_hub

    from transferkit.plugin import trainable_blocks
    from transferkit.plugins import kerashub

    encoder = _siglip_preset(tmp_path / "siglip")
    backbone = registry.backbone(f"keras-hub:{tmp_path / 'siglip'}").factory()
    # keras-hub 0.32's embedding declares 17 tokens; the wrapped one counts the 16 it gives
    assert backbone.tokens is not None
    assert (backbone.tokens.prefix, backbone.tokens.grid) == (0, (4, 4))
    assert not backbone.tokens.class_token and backbone.output_shape == (16, 16)
    assert backbone.poolings == ("avg", "max", "flatten", "mean")
    assert [b[0] for b in trainable_blocks(backbone.model.layers)] == [
        "stem",
        "block_0",
        "block_1",
    ]
    folder = _photos_of_other_sizes(tmp_path / "photos")
    outs = {p: tmp_path / f"{p}.h5" for p in ("mean", "avg", "max")}
    transferkit.extract_many(folder, backbone=f"keras-hub:{tmp_path / 'siglip'}", outs=outs)
    with open_store(outs["mean"]) as store:
        paths = store.paths
    # keras-hub's SigLIP converter, as saved (from_preset looks for a SigLIPBackbone's)
    converter = kerashub.load_converter(str(tmp_path / "siglip"))
    assert isinstance(converter, keras_hub.layers.SigLIPImageConverter)
    images = [np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths]
    tokens = np.concatenate([_siglip_tokens(encoder, converter(i[None])) for i in images])
    assert tokens.shape == (len(paths), 16, 16)
    for pooling in ("mean", "avg", "max"):
        with open_store(outs[pooling]) as store:
            rows, _ = store.read()
        assert _close_per_row(rows, _expected(tokens, pooling, 0)) < 1e-4, pooling
    # no class token: cls and cls+mean are refused, each in one line
    for pooling in ("cls", "cls+mean"):
        with pytest.raises(UsageError) as refused:
            pool(backbone, pooling)
        assert "no class token" in str(refused.value) and "\n" not in str(refused.value)
        siglip = f"keras-hub:{tmp_path / 'siglip'}"
        out = tmp_path / "refused.h5"
        result = invoke_cli("extract", folder, "-b", siglip, "--pooling", pooling, "-o", out)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0 and not out.exists()
        assert len(lines) == 1 and "no class token" in lines[0], result.stderr


@pytest.mark.slow  # a 1-epoch fine-tune of a tiny SigLIP, everything trainable (~10 s)
@pytest.mark.process  # the saved model, loaded in a fresh process
def test_siglip_fine_tune_saves_a_model_that_reloads(tmp_path: Path) -> None:
    _siglip_preset(tmp_path / "siglip")
    folder = _photos_of_other_sizes(tmp_path / "photos")
    result = transferkit.finetune(
        folder,
        backbone=f"keras-hub:{tmp_path / 'siglip'}",
        out=tmp_path / "run",
        strategy="full",  # one phase: the blocks' unfreezing is the DINOv2 test's subject
        epochs=[1],
        batch_size=4,
        split=(0.5, 0.25, 0.25),
        progress=False,
    )
    model = transferkit.load_finetuned(result["model_path"])
    assert model.metadata["resize"]["crop_to_aspect_ratio"]
    paths = sorted(str(p) for p in folder.glob("*/*"))
    from_files, rows = model.predict_files(paths)
    assert list(rows) == list(range(len(paths)))
    pngs = [i for i, p in enumerate(paths) if p.endswith(".png")]
    images = [np.asarray(Image.open(paths[i]).convert("RGB"), np.float32) for i in pngs]
    arrays = np.concatenate([model.predict_proba(image) for image in images])
    np.testing.assert_allclose(arrays, from_files[pngs], rtol=1e-4, atol=1e-6)
    # in a fresh process, through the plugin's register_keras_objects
    code = (
        "import numpy as np, transferkit\n"
        f"model = transferkit.load_finetuned({str(result['model_path'])!r})\n"
        "print(model.predict_proba(np.zeros((1, 48, 64, 3), 'float32')).shape)\n"
        "import keras, keras_hub\n"
        "from transferkit.plugins.kerashub import keras_objects\n"
        f"plain = keras.saving.load_model({str(result['model_path'])!r}, "
        "custom_objects=keras_objects())\n"
        "print(plain.predict(np.zeros((1, 32, 32, 3), 'float32'), verbose=0).shape)\n"
    )
    assert python_output(code).strip().splitlines()[-2:] == ["(1, 2)", "(1, 2)"]


@pytest.mark.slow  # a local Dask cluster (~15 s); test_extract_dask runs two workers
@pytest.mark.process
def test_dask_extraction_equals_one_process(presets: dict[str, Path], tmp_path: Path) -> None:
    folder = _photos(tmp_path / "photos", 56)
    _photos_of_other_sizes(folder, prefix="whole_")  # the workers resize as the converter does
    backbone = f"keras-hub:{presets['dinov2-registers']}"
    kwargs = {"backbone": backbone, "pooling": "cls+mean", "progress": False}
    transferkit.extract(folder, out=tmp_path / "one.h5", **kwargs)
    transferkit.extract(folder, out=tmp_path / "dask.zarr", scheduler="local", jobs=1, **kwargs)
    with open_store(tmp_path / "one.h5") as one, open_store(tmp_path / "dask.zarr") as cluster:
        assert cluster.metadata["tokens"] == one.metadata["tokens"]
        assert one.metadata["tokens"] == {"prefix": 5, "grid": [4, 4], "class_token": True}
        assert cluster.metadata["resize"] == one.metadata["resize"]
        assert one.metadata["resize"]["crop_to_aspect_ratio"] and len(one) == 13
        np.testing.assert_array_equal(cluster.read()[0], one.read()[0])
