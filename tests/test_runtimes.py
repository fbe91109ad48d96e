"""Inference runtimes: every built-in runtime against Keras on real networks, bf16 on a real probe,
``auto``'s choice and fallback, the conversion cache, and the precision in stores and models.

Conversions take seconds, so each network is converted once per runtime (the cache folder is
shared by the module) and the networks are small (64 px or less)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_backbone
from cli_faults import python_output
from click.testing import CliRunner
from imagefiles import make_folder
from logstate import command_line_logger

import transferkit
from transferkit import RuntimeSpec, UsageError, hookimpl, inference, registry
from transferkit.cli import build_cli
from transferkit.store import open_store

ROOT = Path(__file__).resolve().parents[1]
CONVERTING = ["openvino", "litert"]
TOLERANCE = 1e-4
NO_BF16 = inference.native_bf16()


@pytest.fixture(scope="module")
def conversions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("converted")


@pytest.fixture
def cache(conversions: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Jobs find converted models in the module's folder (``$TRANSFERKIT_CACHE/runtimes``)."""
    root = conversions.parent / "cache-root"
    root.mkdir(exist_ok=True)
    (root / "runtimes").mkdir(exist_ok=True)
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(root))
    return root / "runtimes"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_folder(root, per_class=4, size=36)
    return root


def relative_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per row: the largest difference relative to the row's largest value."""
    scale = np.maximum(np.abs(want).max(axis=1), 1e-30)
    return np.abs(got - want).max(axis=1) / scale


def batch_of(net: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random RGB images in 0..255, preprocessed for ``net``."""
    h, w = net.input_size
    pixels = np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype(np.float32)
    return np.asarray(net.preprocess(pixels), dtype=np.float32)


# ---------------------------------------------------------------------------- the networks


@pytest.fixture(scope="module")
def hub_featuremap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TF Hub-style SavedModel written here: images -> a (N, 8, 8, 6) feature map."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = tf.random.Generator.from_seed(1)
            self.kernel = tf.Variable(rng.normal((3, 3, 3, 6)) * 0.4, name="conv/kernel")
            self.bias = tf.Variable(rng.normal((6,)) * 0.1, name="conv/bias")

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, images: tf.Tensor) -> tf.Tensor:
            x = tf.nn.conv2d(images, self.kernel, strides=4, padding="SAME") + self.bias
            return tf.nn.relu6(x * 3.0)

    folder = tmp_path_factory.mktemp("hub") / "featuremap"
    tf.saved_model.save(Tiny(), str(folder))
    return folder


def _example_plugin(register_plugin: Any) -> None:
    sys.path.insert(0, str(ROOT / "plugin_template"))
    try:
        import transferkit_example
    finally:
        sys.path.remove(str(ROOT / "plugin_template"))
    register_plugin(transferkit_example, "example-plugin")


# (backbone, weights, input size, pooling): every pooling is covered, each network once
# (VGG16: random weights give spread-out features; MobileNetV2's are all close to zero)
CASES = {
    "efficientnet-lite0": ("efficientnet-lite0", "default", (32, 32), "avg"),
    "keras-applications": ("vgg16", "none", (32, 32), "max"),
    "tfhub": ("tfhub:{hub}", "default", None, "flatten"),
    "plugin-template": ("example-cnn", "default", (32, 32), "avg"),
}


@pytest.mark.slow  # converts four networks with each converting runtime
@pytest.mark.parametrize("runtime", CONVERTING)
@pytest.mark.parametrize("case", list(CASES))
def test_runtime_matches_keras_per_row(
    case: str, runtime: str, conversions: Path, hub_featuremap: Path, register_plugin: Any
) -> None:
    if case.startswith("plugin-template"):
        _example_plugin(register_plugin)
    name, weights, size, pooling = CASES[case]
    name = name.format(hub=hub_featuremap)
    built = registry.backbone(name).factory(weights=weights, input_size=size)
    net = transferkit.pool(built, pooling)
    x = batch_of(net, 7)
    want = np.asarray(net.model(x, training=False), dtype=np.float32).reshape(7, -1)
    assert want.std(axis=0).mean() > 1e-3 * np.abs(want).mean(), "degenerate features"
    forward = inference.build_forward(
        net, backbone=name, runtime=runtime, precision="32", batch_size=4, cache_dir=conversions
    )
    assert forward.runtime == runtime and forward.precision == "32"
    # a full batch, then a partial last batch; the network runs slices of 4 rows, the last
    # padded (LiteRT) or on a network of its own rows (OpenVINO), so 7 rows in one call are
    # one full slice and one shorter
    got = np.concatenate([forward(x[:4]), forward(x[4:])])
    assert got.shape == want.shape and got.dtype == np.float32
    assert relative_error(got, want).max() <= TOLERANCE, relative_error(got, want)
    assert relative_error(forward(x[:1]), want[:1]).max() <= TOLERANCE
    assert relative_error(forward(x), want).max() <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("runtime", CONVERTING)
@pytest.mark.parametrize("rows", ["0", "3"])
def test_slice_rows_override_keeps_the_rows(
    runtime: str, rows: str, conversions: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TRANSFERKIT_SLICE_ROWS``: 0 runs whole batches of any size, 3 slices of 3 rows."""
    net = transferkit.pool(
        registry.backbone("efficientnet-lite0").factory(input_size=(32, 32)), "avg"
    )
    x = batch_of(net, 7)
    want = np.asarray(net.model(x, training=False), dtype=np.float32)
    monkeypatch.setenv("TRANSFERKIT_SLICE_ROWS", rows)
    forward = inference.build_forward(
        net, runtime=runtime, precision="32", batch_size=4, cache_dir=conversions
    )
    for part in (x, x[:5], x[5:]):
        got = forward(part)
        assert got.shape == (len(part), want.shape[1])
    assert relative_error(np.concatenate([forward(x[:5]), forward(x[5:])]), want).max() <= (
        TOLERANCE
    )
    monkeypatch.setenv("TRANSFERKIT_SLICE_ROWS", "-1")
    with pytest.raises(transferkit.UsageError, match="TRANSFERKIT_SLICE_ROWS"):
        inference.build_forward(net, runtime=runtime, cache_dir=conversions)


@pytest.mark.skipif(bool(NO_BF16), reason=f"bf16: {NO_BF16}")
def test_bf16_linear_probe_within_one_point_of_32_bit(conversions: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lite0 = registry.backbone("efficientnet-lite0").factory(input_size=(32, 32))
    net = transferkit.pool(lite0, "avg")
    digits = load_digits()
    ink = 255.0 - digits.images * (255.0 / 16.0)
    pixels = np.kron(ink, np.ones((4, 4)))[..., None].repeat(3, axis=-1).astype(np.float32)
    x = np.asarray(net.preprocess(pixels), dtype=np.float32)

    def features(runtime: str, precision: str) -> np.ndarray:
        forward = inference.build_forward(
            net, runtime=runtime, precision=precision, cache_dir=conversions
        )
        return np.concatenate([forward(x[i : i + 256]) for i in range(0, len(x), 256)])

    def score(feats: np.ndarray) -> float:
        a, b, ya, yb = train_test_split(
            feats, digits.target, test_size=0.3, random_state=0, stratify=digits.target
        )
        probe = make_pipeline(StandardScaler(), RidgeClassifier(alpha=10.0))
        return float(probe.fit(a, ya).score(b, yb))

    # the 32-bit features from openvino (the same conversion as the test above: one conversion
    # serves both precisions), which match keras to 1e-4
    f32, bf16 = features("openvino", "32"), features("openvino", "bf16")
    assert relative_error(bf16, f32).max() > 1e-4  # really another arithmetic
    assert abs(score(bf16) - score(f32)) <= 0.01, (score(bf16), score(f32))


# ---------------------------------------------------------------------------- the registry


@pytest.mark.process
def test_runtimes_listing_never_imports_tensorflow() -> None:
    code = (
        "import sys, json, io, contextlib\n"
        "from transferkit.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        main(['runtimes', '--json'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0\n"
        "rows = json.loads(buf.getvalue())\n"
        "print(json.dumps([rows, [m in sys.modules for m in "
        "('tensorflow', 'openvino', 'ai_edge_litert')]]))\n"
    )
    out = python_output(code)
    rows, imported = json.loads(out.strip().splitlines()[-1])
    assert imported == [False, False, False]
    by_name = {r["name"]: r for r in rows}
    assert {"keras", "openvino", "litert"} <= set(by_name)
    for row in rows:
        assert {"name", "available", "reason", "precisions", "plugin"} <= set(row)
    assert by_name["openvino"]["precisions"] == ["32", "bf16"]
    assert by_name["openvino"]["plugin"] == "transferkit.plugins.runtimes"
    assert by_name["keras"]["available"] is True and by_name["keras"]["reason"] == ""
    # the order auto tries them in: openvino, litert, then keras
    assert [by_name[n]["auto_order"] for n in ("openvino", "litert", "keras")] == [10, 20, 100]


def test_unknown_runtime_suggests_the_close_name() -> None:
    with pytest.raises(UsageError, match="Did you mean 'openvino'"):
        registry.runtime("openvno")


def test_a_missing_package_or_cpu_feature_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name)
    )
    assert "pip install openvino" in registry.runtime("openvino").unavailable("32")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "avx512f"})
    reason = registry.runtime("openvino").unavailable("bf16")
    assert "no native bf16" in reason
    assert "32-bit only" in registry.runtime("litert").unavailable("bf16")
    net = tiny_backbone.build()
    with pytest.raises(UsageError, match="no native bf16"):
        inference.build_forward(net, runtime="openvino", precision="bf16")
    with pytest.raises(UsageError, match="precision bf16"):
        inference.build_forward(net, runtime="auto", precision="bf16")


class NumpyRuntime:
    """A third-party runtime: the Keras model run eagerly, rows through NumPy."""

    calls = 0

    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        def factory(model: Any, **options: Any) -> Any:
            def forward(images: Any) -> Any:
                NumpyRuntime.calls += 1
                return np.asarray(model(np.asarray(images), training=False))

            return forward

        register(
            RuntimeSpec(
                name="eager-numpy",
                description="eager Keras calls (a test plugin)",
                factory=factory,
                check=lambda precision: "",
            )
        )


def test_a_plugin_runtime_runs_an_extraction(
    tiny: str, images: Path, tmp_path: Path, register_plugin: Any
) -> None:
    register_plugin(NumpyRuntime(), "numpy-runtime")
    listed = CliRunner().invoke(build_cli(), ["runtimes", "--json"])
    row = next(r for r in json.loads(listed.output) if r["name"] == "eager-numpy")
    assert row["plugin"] == "numpy-runtime" and row["available"] is True
    assert row["auto_order"] is None  # auto never picks a runtime that does not ask for it
    table = CliRunner().invoke(build_cli(), ["runtimes", "eager"]).output.splitlines()
    assert table[1].split()[-2:] == ["AUTO_ORDER", "PLUGIN"]
    assert table[2].split()[-2:] == ["-", "numpy-runtime"]
    result = transferkit.extract(
        images, backbone=tiny, out=tmp_path / "f.h5", runtime="eager-numpy", progress=False
    )
    assert result["runtime"] == "eager-numpy" and NumpyRuntime.calls >= 2  # warm-up + batches
    reference = transferkit.extract(
        images, backbone=tiny, out=tmp_path / "k.h5", runtime="keras", progress=False
    )
    with open_store(result["path"]) as a, open_store(reference["path"]) as b:
        assert a.metadata["runtime"] == "eager-numpy" and b.metadata["runtime"] == "keras"
        np.testing.assert_allclose(
            a.read_rows(np.arange(len(a)))[0],
            b.read_rows(np.arange(len(b)))[0],
            rtol=1e-5,
            atol=1e-6,
        )


def test_two_plugins_cannot_register_the_same_runtime(register_plugin: Any) -> None:
    class Clash:
        @hookimpl
        def register_runtimes(self, register: Any) -> None:
            register(RuntimeSpec(name="keras", description="again", factory=lambda m, **k: m))

    register_plugin(Clash(), "clash")
    with pytest.raises(registry.DuplicateNameError, match="transferkit.plugins.runtimes"):
        registry.all_specs("runtime")


# ---------------------------------------------------------------------------- auto and the cache


def test_auto_keeps_keras_for_a_small_job_and_uses_a_cached_conversion(
    tiny: str, images: Path, tmp_path: Path, cache: Path
) -> None:
    small = transferkit.extract(images, backbone=tiny, out=tmp_path / "a.h5", progress=False)
    assert small["runtime"] == "keras" and "pays above" in small["runtime_note"]
    first = transferkit.extract(
        images, backbone=tiny, out=tmp_path / "o.h5", runtime="openvino", progress=False
    )
    assert first["conversion"] in ("converted", "cached")
    entries = sorted(p.name for p in cache.iterdir() if p.name.startswith("openvino-tiny-cnn"))
    again = transferkit.extract(images, backbone=tiny, out=tmp_path / "b.h5", progress=False)
    assert again["runtime"] == "openvino" and again["conversion"] == "cached"
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith("openvino-tiny-cnn")) == (
        entries
    )
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left
    with open_store(again["path"]) as a, open_store(small["path"]) as b:
        got, want = a.read_rows(np.arange(len(a)))[0], b.read_rows(np.arange(len(b)))[0]
        assert a.metadata["runtime"] == "openvino" and a.metadata["precision"] == "32"
    assert relative_error(got, want).max() <= TOLERANCE


def test_auto_converts_when_it_pays_and_a_second_run_converts_nothing(
    conversions: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = transferkit.pool(tiny_backbone.build(), "flatten")
    monkeypatch.setattr(inference, "AUTO_CONVERT_SECONDS", 0.0)
    first = inference.auto_candidates("32")[0].name
    assert first == "openvino"  # the documented order: openvino, litert, keras
    made = inference.build_forward(net, images=1000, cache_dir=conversions)
    assert made.runtime == first and made.conversion == "converted"
    reused = inference.build_forward(net, images=1000, cache_dir=conversions)
    assert reused.runtime == first and reused.conversion == "cached"


class _Igamma:
    """A Keras layer computing tf.math.igamma, an op neither converter knows."""

    @staticmethod
    def model() -> Any:
        import keras
        import tensorflow as tf

        class Igamma(keras.layers.Layer):
            def call(self, x: Any) -> Any:
                return tf.math.igamma(x * x + 1.0, x * x + 2.0)

        inputs = keras.Input((8, 8, 3))
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(Igamma()(inputs)))


def test_an_op_a_runtime_lacks_names_runtime_backbone_and_op_and_auto_falls_back(
    conversions: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    net = transferkit.Backbone(
        name="igamma-net",
        model=_Igamma.model(),
        preprocess=lambda x: x,
        input_size=(8, 8),
        pooling="avg",
        weights_source="none",
    )
    with pytest.raises(inference.ConversionError) as raised:
        inference.build_forward(net, runtime="openvino", cache_dir=conversions)
    message = str(raised.value)
    assert "openvino" in message and "igamma-net" in message and "Igamma" in message
    assert "\n" not in message
    monkeypatch.setattr(inference, "AUTO_CONVERT_SECONDS", 0.0)
    capsys.readouterr()
    with command_line_logger():  # stderr as the command line shows it
        forward = inference.build_forward(net, images=100, cache_dir=conversions)
    assert forward.runtime == "keras" and "cannot convert" in forward.note
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "auto falls back to keras" in err[0] and "Igamma" in err[0]
    x = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(forward(x), np.asarray(net.model(x)), rtol=1e-6)


# ---------------------------------------------------------------------------- the recipe


def test_stores_and_models_record_runtime_and_precision(
    tiny: str, images: Path, tmp_path: Path, cache: Path
) -> None:
    result = transferkit.extract(
        images, backbone=tiny, out=tmp_path / "f.h5", runtime="litert", progress=False
    )
    assert result["runtime"] == "litert" and result["precision"] == "32"
    with open_store(result["path"]) as reader:
        assert reader.metadata["runtime"] == "litert" and reader.metadata["precision"] == "32"
    trained = transferkit.train(
        result["path"], classifier="logistic-regression", out=tmp_path / "m.skops"
    )
    from transferkit.models import load_model

    recipe = load_model(trained["model_path"]).recipe
    assert (recipe.runtime, recipe.precision) == ("litert", "32")
    # a model asks for its own precision: anything else is refused before any work
    with pytest.raises(UsageError, match="trained on 32-bit features"):
        transferkit.predict(trained["model_path"], [str(images)], precision="bf16")
    predicted = transferkit.predict(trained["model_path"], [str(images)], runtime="openvino")
    assert all(p["status"] == "ok" for p in predicted["predictions"])


@pytest.mark.skipif(bool(NO_BF16), reason=f"bf16: {NO_BF16}")
def test_resume_refuses_another_precision_and_predict_a_bf16_model_at_32(
    tiny: str, images: Path, tmp_path: Path, cache: Path
) -> None:
    out = tmp_path / "f.h5"
    made = transferkit.extract(images, backbone=tiny, out=out, precision="bf16", progress=False)
    assert made["runtime"] == "openvino" and made["precision"] == "bf16"
    with pytest.raises(UsageError, match="precision"):
        transferkit.extract(images, backbone=tiny, out=out, resume=True, progress=False)
    again = transferkit.extract(
        images, backbone=tiny, out=out, resume=True, precision="bf16", progress=False
    )
    assert again["resumed"] and again["new_rows"] == 0
    trained = transferkit.train(str(out), classifier="logistic-regression", out=tmp_path / "m")
    with pytest.raises(UsageError, match="trained on bf16-bit features"):
        transferkit.predict(trained["model_path"], [str(images)], precision="32")
    predicted = transferkit.predict(trained["model_path"], [str(images)])
    assert all(p["status"] == "ok" for p in predicted["predictions"])


def test_feature_cache_key_ignores_the_runtime_but_not_bf16() -> None:
    from transferkit.jobs.feature_cache import cache_key

    setting = {"backbone": "efficientnet-lite0", "pooling": "avg", "input_size": (64, 64)}
    assert cache_key(setting, "default", "d") == cache_key(setting, "default", "d", "32")
    assert cache_key(setting, "default", "d") != cache_key(setting, "default", "d", "bf16")


def test_cli_flags_and_config(tiny: str, images: Path, tmp_path: Path, cache: Path) -> None:
    config = tmp_path / "extract.yaml"
    config.write_text("runtime: litert\nprecision: '32'\n")
    runner = CliRunner()
    shown = runner.invoke(build_cli(), ["extract", str(images), "--config", str(config),
                                        "--print-config"])  # fmt: skip
    assert shown.exit_code == 0 and "runtime: litert" in shown.output
    result = runner.invoke(
        build_cli(),
        ["extract", str(images), "-b", tiny, "-o", str(tmp_path / "f.h5"), "--config",
         str(config), "--no-progress", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runtime"] == "litert"
    bad = runner.invoke(
        build_cli(), ["extract", str(images), "-b", tiny, "-o", str(tmp_path / "g.h5"),
                      "--runtime", "openvno"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "Did you mean 'openvino'" in bad.output
    for command in ("extract", "spotcheck", "predict", "demo"):
        help_text = runner.invoke(build_cli(), [command, "--help"]).output
        assert "--runtime" in help_text and "--precision" in help_text
