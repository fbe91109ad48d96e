"""FeatureRecipe: parsing, weights, identity, cache key and store metadata (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_faults import python_output

from transferkit.errors import UsageError, WeightsUnavailableError
from transferkit.recipe import FeatureRecipe, normalise_weights


def test_parse_the_short_form() -> None:
    recipe = FeatureRecipe.parse("efficientnet-lite0@128x96:max")
    assert (recipe.backbone, recipe.input_size, recipe.pooling) == (
        "efficientnet-lite0",
        (128, 96),
        "max",
    )
    assert recipe.text == "efficientnet-lite0@128x96:max"
    plain = FeatureRecipe.parse("resnet50", input_size="64", pooling="flatten")
    assert (plain.input_size, plain.pooling) == ((64, 64), "flatten")
    # what the text says wins over the defaults it is given
    assert FeatureRecipe.parse("resnet50@32:avg", input_size=64, pooling="max").text == (
        "resnet50@32:avg"
    )
    # a name holding ":" keeps it; only a pooling after the last ":" is one
    hub = FeatureRecipe.parse("tfhub:/models/fv@96:max")
    assert (hub.backbone, hub.input_size, hub.pooling) == ("tfhub:/models/fv", (96, 96), "max")
    assert FeatureRecipe.parse("tfhub:https://x.org/m/5").backbone == "tfhub:https://x.org/m/5"
    for bad, needle in [
        ("@64", "empty backbone name"),
        ("resnet50@", "not understood"),
        ("resnet50@abc", "not understood"),
        ("resnet50@4", "too small"),
        ("resnet50@96x", "not understood"),
    ]:
        with pytest.raises(UsageError, match=needle):
            FeatureRecipe.parse(bad)
    with pytest.raises(UsageError, match="unknown pooling"):
        FeatureRecipe.create("resnet50", pooling="median")


def test_one_weights_normalisation(tmp_path: Path) -> None:
    for value in ("default", "DEFAULT", "imagenet", "", " default "):
        assert normalise_weights(value) == "default"
    for value in (None, "none", "None", "random"):
        assert normalise_weights(value) is None
    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"x")
    assert normalise_weights(path) == str(path)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        normalise_weights(tmp_path / "missing.h5")
    assert FeatureRecipe("x", weights="None").weights is None
    assert FeatureRecipe("x", weights=None).to_metadata()["weights"] == "none"


def test_identity_ignores_the_runtime_but_not_the_precision() -> None:
    keras = FeatureRecipe.create("lite", input_size=64, runtime="keras")
    openvino = FeatureRecipe.create("lite", input_size=64, runtime="openvino")
    bf16 = FeatureRecipe.create("lite", input_size=64, precision="bf16")
    assert keras == openvino and hash(keras) == hash(openvino)
    assert keras != bf16
    assert keras.cache_key("d") == openvino.cache_key("d") != bf16.cache_key("d")
    assert keras.cache_key("d") != keras.cache_key("e")
    assert keras.cache_key("d") != keras.replace(pooling="max").cache_key("d")
    assert keras.cache_key("d") != keras.replace(weights=None).cache_key("d")
    assert keras.same_network(keras.replace(pooling="flatten"))
    assert not keras.same_network(keras.replace(input_size=96))
    assert not keras.same_network(bf16.replace(pooling="max"))


def test_cache_keys_of_earlier_versions_stay_valid() -> None:
    """A 32-bit key is the hash the feature cache has always used, so caches stay warm."""
    import hashlib
    import json

    old = {
        "backbone": "efficientnet-lite0",
        "weights": "default",
        "input_size": [64, 64],
        "pooling": "max",
        "images": "d",
    }
    expected = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:20]
    assert FeatureRecipe.parse("efficientnet-lite0@64:max").cache_key("d") == expected


def test_labels() -> None:
    recipe = FeatureRecipe.parse("lite@64:max")
    assert recipe.label() == "lite@64:max"
    assert recipe.label(64, "max") == "lite"
    assert FeatureRecipe.parse("lite@64x48").label() == "lite@64x48"
    assert FeatureRecipe.create("lite", precision="bf16").label() == "lite+bf16"


def test_store_metadata_round_trip_and_older_stores() -> None:
    recipe = FeatureRecipe.create(
        "lite", weights=None, input_size="64x48", pooling="max", precision="bf16", runtime="litert"
    )
    meta = recipe.to_metadata()
    again = FeatureRecipe.from_metadata(meta)
    assert again == recipe and again.runtime == "litert"
    # what earlier versions wrote: str(None), the size as JSON text, no precision or runtime
    older = FeatureRecipe.from_metadata(
        {"backbone": "lite", "weights": "None", "input_size": "[64, 64]", "pooling": "avg"}
    )
    assert older == FeatureRecipe("lite", weights=None, input_size=(64, 64))
    assert (older.precision, older.runtime) == ("32", "keras")
    assert FeatureRecipe.from_metadata({}).backbone == ""


@pytest.mark.process
def test_importing_the_recipe_imports_neither_tensorflow_nor_numpy() -> None:
    code = (
        "import sys, transferkit.recipe; "
        "print(any(m in sys.modules for m in ('tensorflow', 'numpy', 'keras')))"
    )
    assert python_output(code).strip() == "False"
