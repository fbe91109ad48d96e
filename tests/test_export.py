"""``transferkit export``: each format loaded by its own runtime gives ``predict``'s probabilities.

A linear probe (``.skops``) and a fine-tuned ``.keras`` on the tiny backbone, over PNG images at
its input size (32 px), exported as every format and run by clients nobody here wrote:
``keras.saving.load_model``, ``tf.saved_model.load``, onnxruntime, ``openvino.Core`` and
``ai_edge_litert``'s ``Interpreter``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_backbone
from cli_faults import invoke_cli, tree_digest
from PIL import Image

from transferkit import api, plugin_manager, registry
from transferkit.jobs.export import FORMAT_FILES, fold_linear_head, read_metadata
from transferkit.options import EXPORT_FORMATS

CLASSES = ("bright", "dark", "mid")  # sorted, as the classes of a folder are
FORMATS = ("keras", "saved_model", "onnx", "openvino", "litert")
assert set(FORMATS) == set(EXPORT_FORMATS) == set(FORMAT_FILES)  # every format is tested
OUT_NAMES = {"keras": "m.keras", "onnx": "m.onnx"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """PNG images of three classes, a logistic regression on tiny-cnn features (.skops) and a
    fine-tuned tiny-cnn (.keras)."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / "images" / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.normal((200, 50, 125)[c], 45, (32, 32, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / name / f"{i}.png")
    pm = plugin_manager.get_plugin_manager()
    pm.register(tiny_backbone, name="tiny-backbone")
    registry.clear_cache()
    try:
        api.extract(root / "images", backbone="tiny-cnn", out=root / "f.h5", progress=False)
        api.train(root / "f.h5", classifier="logistic-regression", out=root / "lr.skops")
        api.train(root / "f.h5", classifier="knn-3", out=root / "knn.skops")
        api.finetune(
            root / "images",
            backbone="tiny-cnn",
            out=root / "run",
            strategy="head-only",
            epochs=2,
            batch_size=8,
            progress=False,
        )
    finally:
        pm.unregister(tiny_backbone)
        registry.clear_cache()
    paths = sorted(str(p) for p in (root / "images").rglob("*.png"))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    yield {
        "root": root,
        "paths": paths,
        "pixels": pixels,
        "skops": root / "lr.skops",
        "keras": root / "run" / "model.keras",
    }


def predicted(model: Path, paths: list[str], **options: Any) -> np.ndarray:
    """``transferkit predict``'s probabilities of every class, in the class order."""
    result = api.predict(model, paths, top=len(CLASSES), **options)
    index = {name: i for i, name in enumerate(result["label_names"])}
    probs = np.zeros((len(paths), len(index)))
    for row, entry in enumerate(result["predictions"]):
        for item in entry["top"]:
            probs[row, index[item["label"]]] = item["probability"]
    return probs


def run_export(fmt: str, path: Path, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The export's probabilities for ``x``, computed by the format's own runtime, and the
    metadata it carries (read from where that format keeps it)."""
    if fmt == "keras":
        import keras

        return np.asarray(keras.saving.load_model(path).predict(x, verbose=0)), _zip_meta(path)
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return np.asarray(loaded.serve(tf.constant(x))), _folder_meta(path)
    if fmt == "onnx":
        import onnx
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        return np.asarray(out), json.loads(props["transferkit"])
    if fmt == "openvino":
        import openvino

        # f32 asked for: on a CPU with bf16, OpenVINO computes in bf16 unless told otherwise
        compiled = openvino.Core().compile_model(
            str(path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        return np.asarray(compiled(x)[0]), _folder_meta(path)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path / "model.tflite"))
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return np.asarray(out), _folder_meta(path)


def _zip_meta(path: Path) -> dict[str, Any]:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return dict(json.loads(archive.read("transferkit.json")))


def _folder_meta(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / "transferkit.json").read_text()))


@pytest.mark.parametrize("source", ["skops", "keras"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_in_its_own_runtime_gives_predicts_probabilities(
    trained: dict[str, Any], fmt: str, source: str, tmp_path: Path, tiny: str
) -> None:
    out = tmp_path / OUT_NAMES.get(fmt, fmt)
    result = api.export(trained[source], format=fmt, out=out)
    assert result["path"] == str(out) and result["label_names"] == list(CLASSES)
    assert result["input_size"] == [32, 32]
    want = predicted(trained[source], trained["paths"])
    got, meta = run_export(fmt, out, trained["pixels"])
    assert got.shape == (len(trained["paths"]), len(CLASSES))
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert meta["label_names"] == list(CLASSES) and meta["export_format"] == fmt
    assert meta["input"]["shape"] == [None, 32, 32, 3]
    assert meta["metadata"]["backbone"] == "tiny-cnn"
    if source == "skops":
        assert meta["metadata"]["recipe"]["pooling"] == "avg"
        assert meta["metadata"]["probabilities"] == "softmax of the head's scores"
    assert read_metadata(out) == meta


def test_a_keras_export_of_a_probe_predicts_as_the_probe(
    trained: dict[str, Any], tmp_path: Path, tiny: str
) -> None:
    """The exported .keras is a fine-tuned model to transferkit: predict and load_finetuned read
    it, with the class names and the probabilities of the .skops it came from."""
    out = tmp_path / "probe.keras"
    api.export(trained["skops"], out=out)
    paths = trained["paths"]
    np.testing.assert_allclose(predicted(out, paths), predicted(trained["skops"], paths), atol=1e-5)
    assert api.load_finetuned(out).label_names == list(CLASSES)


@pytest.mark.slow
def test_predict_runs_a_finetuned_model_on_openvino(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    paths = trained["paths"]
    keras_probs = predicted(trained["keras"], paths, runtime="keras")
    np.testing.assert_allclose(predicted(trained["keras"], paths, runtime="openvino"), keras_probs,
                               atol=1e-4)  # fmt: skip
    converted = [p.name for p in (tmp_path / "cache" / "runtimes").iterdir()]
    assert [n for n in converted if n.startswith("openvino-finetuned-tiny-cnn")], converted


def test_margin_and_one_vs_rest_heads_fold_to_their_own_probabilities() -> None:
    """Heads without probabilities (LinearSVC, binary or not) and one-vs-rest ones (SGD with
    log loss) fold to the probabilities predict gives them, and say which formula."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from transferkit import estimators

    rng = np.random.default_rng(1)
    X = rng.normal(3.0, 2.0, (90, 6))
    for classes, model in [
        (2, make_pipeline(StandardScaler(), LinearSVC())),
        (3, make_pipeline(StandardScaler(), LinearSVC())),
        (3, make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", random_state=0))),
        (2, make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", random_state=0))),
    ]:
        y = np.arange(90) % classes
        model.fit(X, y)
        head = fold_linear_head(model, classes, "test", 6)
        rows = rng.normal(3.0, 2.0, (20, 6))
        want = estimators.predict_proba(model, rows, np.arange(classes))
        np.testing.assert_allclose(head.probabilities(rows), want, atol=1e-6)
        if isinstance(model[-1], LinearSVC):
            assert "margins only" in head.note
        else:
            assert head.activation == ("ovr" if classes > 2 else "binary-sigmoid")


def test_a_head_that_cannot_be_folded_is_refused_in_one_line(
    trained: dict[str, Any], tmp_path: Path, tiny: str
) -> None:
    before = tree_digest(tmp_path)
    result = invoke_cli("export", trained["root"] / "knn.skops", "--out", tmp_path / "k.keras")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "cannot be folded" in lines[0] and "logistic regression" in lines[0]
    assert tree_digest(tmp_path) == before


def test_an_existing_export_needs_overwrite_and_the_cli_prints_json(
    trained: dict[str, Any], tmp_path: Path, tiny: str
) -> None:
    out = tmp_path / "m.onnx"
    first = invoke_cli("export", trained["skops"], "--format", "onnx", "-o", out, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["format"] == "onnx" and out.is_file()
    again = invoke_cli("export", trained["skops"], "--format", "onnx", "-o", out)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    replaced = invoke_cli("export", trained["skops"], "--format", "onnx", "-o", out, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    other = tmp_path / "notes.onnx"
    other.write_text("mine")
    refused = invoke_cli("export", trained["skops"], "--format", "onnx", "-o", other, "--overwrite")
    assert refused.returncode != 0 and other.read_text() == "mine"
