"""``transferkit export``: any trained result as one deployable model.

The exported model is one graph: RGB images, float32 0..255, at the model's input size
``(N, H, W, 3)`` -> the backbone's preprocessing -> the backbone -> its pooling -> the head ->
class probabilities ``(N, classes)``. Nothing of transferkit is needed to run it.

* A fine-tuned ``.keras`` (``transferkit finetune``) is that graph already.
* A ``.skops`` model of ``train`` or ``stream`` is folded: the backbone is built and pooled as
  the model's features were (:func:`transferkit.jobs.predict.feature_network`), its
  preprocessing becomes standard Keras layers (the check ``finetune`` uses), and a *linear* head
  (logistic regression, ridge, linear SVC, SGD, perceptron, ``softmax``) with its
  ``StandardScaler`` becomes one ``Dense`` layer: ``(x - mean) / scale @ W + b`` is
  ``x @ (W / scale) + (b - mean / scale @ W)``. The probabilities are those ``predict`` gives:
  which formula the head uses (softmax, one-vs-rest sigmoids, the binary sigmoid, or for a head
  that gives margins only a softmax of its decision function) is found by comparing each with
  the head's own answer on probe rows, and stated in the metadata. A head that is not linear
  (RBF SVC, k-NN, trees, naive Bayes, river) is refused in one line naming those that export.

The formats are Keras 3's ``model.export`` (``keras`` is ``model.save``). The class names and
the recipe travel inside the export: in the ``.keras`` zip as ``transferkit.json`` (so
``transferkit predict`` and ``load_finetuned`` read it), in the ONNX file's ``metadata_props``
(key ``transferkit``), and as ``transferkit.json`` inside the folder of the others
(``saved_model/``, ``openvino/`` with ``model.xml``, ``litert/`` with ``model.tflite``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransferkitError, UsageError
from ..models import identify_file, load_model
from ..options import ExportOptions
from ..outputs import atomic_path, check_outside_inputs, check_writable, replacing

log = logging.getLogger(__name__)

EXPORT_FORMAT = "transferkit-export"
EXPORT_VERSION = 1
METADATA_FILE = "transferkit.json"  # the sidecar's name (the same as inside a fine-tuned .keras)
ONNX_METADATA_KEY = "transferkit"
# the file inside a folder format, per format ("" for formats written as one file)
FORMAT_FILES = {
    "keras": "",
    "onnx": "",
    "saved_model": "saved_model.pb",
    "openvino": "model.xml",
    "litert": "model.tflite",
}
EXPORT_EXTRAS = {"onnx": "onnx"}  # the extra that installs a format's exporter
LINEAR_HEADS = (
    "logistic regression (logistic-regression, logreg-cv), ridge, linear SVC (linear-svc), SGD, "
    "perceptron, passive-aggressive and softmax: the `linear` group"
)


# ---------------------------------------------------------------------- the linear head


@dataclass
class LinearHead:
    """A linear head folded into one affine map on the raw features: ``scores = x @ kernel +
    bias``, and how the scores become the probabilities ``predict`` gives (``activation``)."""

    kernel: np.ndarray  # (features, outputs)
    bias: np.ndarray  # (outputs,)
    activation: str  # "softmax", "ovr" (sigmoids, normalised), "binary-sigmoid", "binary-margin"
    note: str = ""

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """The probabilities in NumPy (float64), as the exported graph computes them."""
        z = np.asarray(X, np.float64) @ self.kernel.astype(np.float64) + self.bias
        if self.activation == "ovr":
            z = -np.logaddexp(0.0, -z)  # log sigmoid
        return _softmax(z)


ACTIVATION_NOTES = {
    "softmax": "softmax of the head's scores",
    "ovr": "one-vs-rest: each class's sigmoid, normalised to sum to 1",
    "binary-sigmoid": "binary: the sigmoid of the head's score",
    "binary-margin": (
        "the head gives margins only (no probabilities): softmax of its decision function "
        "(of -s and s for two classes), as `transferkit predict` reports"
    ),
}


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _refuse_head(classifier: str, why: str) -> UsageError:
    return UsageError(
        f"the {classifier} head cannot be folded into the exported graph ({why}); heads that "
        f"export: {LINEAR_HEADS}; or fine-tune the backbone with a head (`transferkit "
        "finetune`) and export its model.keras"
    )


def _scaler_form(steps: list[Any], dim: int, classifier: str) -> tuple[np.ndarray, np.ndarray]:
    """``(shift, scale)`` of the transformers before the head: standard scalers only."""
    from sklearn.preprocessing import StandardScaler

    shift, scale = np.zeros(dim), np.ones(dim)
    for step in steps:
        if step is None or step == "passthrough":
            continue
        if type(step) is not StandardScaler:
            raise _refuse_head(classifier, f"its {type(step).__name__} is not a StandardScaler")
        mean = np.zeros(dim) if step.mean_ is None else np.asarray(step.mean_, np.float64)
        std = np.ones(dim) if step.scale_ is None else np.asarray(step.scale_, np.float64)
        # x -> ((x - shift) / scale - mean) / std
        shift, scale = shift + mean * scale, scale * std
    return shift, scale


def fold_linear_head(estimator: Any, classes: int, classifier: str, dim: int) -> LinearHead:
    """The linear head of ``estimator`` (a scikit-learn ``Pipeline`` of standard scalers and a
    linear model, or the linear model alone) as a :class:`LinearHead` whose probabilities equal
    :func:`transferkit.estimators.predict_proba` on probe rows; a :class:`UsageError` naming the
    heads that export for any other."""
    from .. import estimators

    steps = list(getattr(estimator, "steps", None) or [(None, estimator)])
    final = steps[-1][1]
    coef = getattr(final, "coef_", None)
    intercept = getattr(final, "intercept_", None)
    if (
        coef is None
        or not hasattr(final, "decision_function")
        or estimators.library_of(estimator) == "river"
    ):
        raise _refuse_head(classifier, "it is not linear")
    known = np.asarray(getattr(final, "classes_", np.arange(classes)))
    if not np.array_equal(known, np.arange(classes)):
        raise _refuse_head(classifier, f"it knows classes {known.tolist()[:10]} of {classes}")
    coef = np.atleast_2d(np.asarray(coef, np.float64))  # (outputs, features)
    bias = np.broadcast_to(np.asarray(0.0 if intercept is None else intercept, np.float64),
                           (coef.shape[0],)).copy()  # fmt: skip
    if coef.shape[1] != dim:
        raise _refuse_head(classifier, f"it takes {coef.shape[1]} features, not {dim}")
    shift, scale = _scaler_form([s for _, s in steps[:-1]], dim, classifier)
    kernel = coef.T / scale[:, None]
    bias = bias - shift @ kernel
    rng = np.random.default_rng(0)
    probe = shift + scale * rng.normal(0.0, 1.5, size=(64, dim))
    # the head's own scores must be the affine map (a guard against lookalike estimators)
    scores = np.asarray(estimator.decision_function(probe), np.float64).reshape(len(probe), -1)
    if not np.allclose(scores, probe @ kernel + bias, rtol=1e-4, atol=1e-4):
        raise _refuse_head(classifier, "its decision function is not the affine map of coef_")
    expected = estimators.predict_proba(estimator, probe, np.arange(classes))
    if kernel.shape[1] == 1:  # binary: one score for the second class
        candidates = [
            LinearHead(np.hstack([-kernel, kernel]), np.hstack([-bias, bias]), "binary-margin"),
            LinearHead(
                np.hstack([0 * kernel, kernel]), np.hstack([0 * bias, bias]), "binary-sigmoid"
            ),  # fmt: skip
        ]
    else:
        candidates = [LinearHead(kernel, bias, "softmax"), LinearHead(kernel, bias, "ovr")]
    margins_only = not hasattr(final, "predict_proba")  # e.g. LinearSVC, RidgeClassifier
    for head in candidates:
        if np.allclose(head.probabilities(probe), expected, rtol=1e-4, atol=1e-5):
            key = "binary-margin" if margins_only else head.activation
            head.note = ACTIVATION_NOTES[key]
            head.kernel = head.kernel.astype(np.float32)
            head.bias = head.bias.astype(np.float32)
            return head
    raise _refuse_head(classifier, "its probabilities are not a softmax or sigmoid of its scores")


def head_layers(keras: Any, head: LinearHead, features: Any) -> Any:
    """The folded head as standard Keras layers on ``features``: ``Dense`` (the kernel and bias),
    and for one-vs-rest the log-sigmoid (``-softplus(-z)``) before the softmax."""
    k = head.kernel.shape[1]
    if head.activation == "ovr":
        dense = keras.layers.Dense(k, name="head_negated_scores", dtype="float32")
        x = dense(features)
        dense.set_weights([-head.kernel, -head.bias])
        x = keras.layers.Activation("softplus", name="head_softplus", dtype="float32")(x)
        x = keras.layers.Rescaling(-1.0, name="head_log_sigmoid", dtype="float32")(x)
        return keras.layers.Activation("softmax", name="probabilities", dtype="float32")(x)
    dense = keras.layers.Dense(k, name="head", dtype="float32")
    x = dense(features)
    dense.set_weights([head.kernel, head.bias])
    return keras.layers.Activation("softmax", name="probabilities", dtype="float32")(x)


# ---------------------------------------------------------------------- the graph


@dataclass
class Exportable:
    """The one Keras graph to export, its class names, and what travels with it."""

    model: Any
    label_names: list[str]
    input_size: tuple[int, int]
    metadata: dict[str, Any] = field(default_factory=dict)

    def sidecar(self, fmt: str) -> dict[str, Any]:
        h, w = self.input_size
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "export_format": fmt,
            "label_names": list(self.label_names),
            "input": {
                "shape": [None, h, w, 3],
                "dtype": "float32",
                "pixels": "RGB, 0..255, already resized to the input size",
            },
            "output": {"shape": [None, len(self.label_names)], "values": "class probabilities"},
            "metadata": self.metadata,
        }


def exportable(model_path: str | Path, *, trust: bool = False) -> Exportable:
    """The graph of a fine-tuned ``.keras`` or of a ``.skops`` model with a linear head."""
    from ..trainer.saved import is_finetuned

    path = Path(model_path)
    if is_finetuned(path) or (path.is_file() and identify_file(path) == "keras"):
        return _finetuned_graph(path)
    if path.is_file() and identify_file(path) in ("pickle-model", "pickle"):
        raise UsageError(
            f"{path} is a pickled (river) model; its head cannot be folded into the exported "
            f"graph. Heads that export: {LINEAR_HEADS}"
        )
    return _folded_graph(path, trust)


def _finetuned_graph(path: Path) -> Exportable:
    from ..trainer.saved import load_finetuned

    loaded = load_finetuned(path)
    if not loaded.metadata.get("preprocess_in_model", True):
        raise UsageError(
            f"{path} leaves its backbone's preprocessing ({loaded.metadata.get('preprocessing')}) "
            "to the plugin that made it, so an export of it would not be self-contained"
        )
    metadata = {**loaded.metadata, "source": path.name, "probabilities": "the model's softmax"}
    return Exportable(loaded.model, list(loaded.label_names), loaded.input_size, metadata)


def _folded_graph(path: Path, trust: bool) -> Exportable:
    import keras

    from ..trainer.layers import standard_preprocessing
    from ..trainer.model import checked_preprocess_mode
    from .predict import feature_network

    saved = load_model(path, trust=trust)
    if saved.recipe.precision != "32":
        raise UsageError(
            f"{path} was trained on {saved.recipe.precision} features; the export computes in "
            "32-bit, which gives other features: train on 32-bit features to export"
        )
    if not saved.recipe.backbone:
        raise UsageError(f"{path} does not record the backbone of its features; cannot export")
    names = list(saved.label_names)
    dim = int(saved.feature_dim or 0)
    head = fold_linear_head(saved.estimator, len(names), saved.classifier, dim or _width(saved))
    name, net = feature_network(saved)
    size = (int(net.input_size[0]), int(net.input_size[1]))
    args = checked_preprocess_mode(net, size)
    if args is None:
        raise UsageError(
            f"backbone {name}'s preprocessing ({net.preprocessing or 'unnamed'}) is not an affine "
            "map of the pixels that standard Keras layers express, so it cannot go in the graph"
        )
    inputs = keras.Input((*size, 3), name="image", dtype="float32")
    x = standard_preprocessing(args, inputs)
    features = net.model(x)
    outputs = head_layers(keras, head, features)
    graph = keras.Model(inputs, outputs, name="transferkit_export")
    recipe = saved.recipe.to_metadata()
    metadata = {
        "backbone": name,
        "input_size": list(size),
        "preprocessing": net.preprocessing,
        "preprocess_mode": args["mode"],
        "preprocess_in_model": True,
        "head": saved.classifier,
        "weights_source": net.weights_source,
        "recipe": recipe,
        "source": path.name,
        "probabilities": head.note,
        **({} if net.resize.is_default else {"resize": net.resize.describe()}),
    }
    return Exportable(graph, names, size, metadata)


def _width(saved: Any) -> int:
    width = getattr(saved.estimator, "n_features_in_", None)
    if not isinstance(width, int):
        raise TransferkitError("the model records no feature width; cannot fold its head")
    return width


# ---------------------------------------------------------------------- writing


def check_export_out(out: Path, fmt: str, *, overwrite: bool, inputs: list[Any]) -> None:
    """Refuse an output that touches the model, that exists without ``overwrite``, or that
    exists and is not an export of transferkit (nothing is touched)."""
    check_outside_inputs(out, inputs, "export")
    if fmt == "keras" and out.suffix != ".keras":
        raise UsageError(f"--format keras writes a .keras file; got --out {out}")
    if fmt == "onnx" and out.suffix != ".onnx":
        raise UsageError(f"--format onnx writes an .onnx file; got --out {out}")
    if os.path.lexists(out):
        if not overwrite:
            raise UsageError(f"{out} already exists; pass --overwrite to replace it")
        if read_metadata(out) is None:
            from ..outputs import refuse_replacing

            raise refuse_replacing(out, "export", "an export of transferkit")
    check_writable(out)


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    """The ``transferkit.json`` of an export at ``path`` (any format), or None."""
    import zipfile

    path = Path(path)
    try:
        if path.is_dir():
            data = json.loads((path / METADATA_FILE).read_text())
        elif path.suffix == ".onnx":
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            found = [p.value for p in model.metadata_props if p.key == ONNX_METADATA_KEY]
            data = json.loads(found[0]) if found else None
        else:
            with zipfile.ZipFile(path) as archive:
                data = json.loads(archive.read(METADATA_FILE))
    except Exception:  # not an export (or not readable): the caller says so
        return None
    return data if isinstance(data, dict) and data.get("format") == EXPORT_FORMAT else None


def write_export(graph: Exportable, fmt: str, out: Path) -> None:
    """Write ``graph`` as ``fmt`` to ``out`` (beside it first, then renamed into place)."""
    import warnings

    sidecar = json.dumps(graph.sidecar(fmt), indent=2, default=str)
    h, w = graph.input_size
    graph.model(np.zeros((1, h, w, 3), np.float32))  # exporters want a model called once
    with replacing(out), atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "keras":
            import zipfile

            graph.model.save(tmp)
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(METADATA_FILE, sidecar)
        elif fmt == "onnx":
            import onnx

            graph.model.export(str(tmp), format="onnx", verbose=False)
            model = onnx.load(str(tmp))
            entry = model.metadata_props.add()
            entry.key, entry.value = ONNX_METADATA_KEY, sidecar
            onnx.save(model, str(tmp))
        else:
            tmp.mkdir()
            if fmt == "saved_model":
                graph.model.export(str(tmp), format="tf_saved_model", verbose=False)
            else:
                target = tmp / FORMAT_FILES[fmt]
                graph.model.export(str(target), format=fmt, verbose=False)
            (tmp / METADATA_FILE).write_text(sidecar)


def export(model_path: str | Path, *, options: ExportOptions) -> dict[str, Any]:
    """Export the model at ``model_path`` as ``options.format`` to ``options.out``; returns the
    path, the format, the class names, the input size and how the probabilities are made."""
    fmt = options.format
    if options.out is None:
        raise UsageError("give --out, where the export is written")
    out = Path(options.out)
    source = Path(model_path)
    if not source.exists():
        raise UsageError(f"model {source} does not exist")
    check_export_out(out, fmt, overwrite=options.overwrite, inputs=[source])
    started = time.perf_counter()
    graph = exportable(source, trust=options.trust)
    log.info(f"exporting {source} as {fmt} to {out}")
    try:
        write_export(graph, fmt, out)
    except (ImportError, ModuleNotFoundError) as exc:
        raise UsageError(
            f"--format {fmt} needs {exc.name or 'a package'}: pip install "
            f"'transferkit[{EXPORT_EXTRAS.get(fmt, fmt)}]'"
        ) from None
    return {
        "path": str(out),
        "format": fmt,
        "file": str(out / FORMAT_FILES[fmt]) if FORMAT_FILES[fmt] else str(out),
        "label_names": graph.label_names,
        "input_size": list(graph.input_size),
        "probabilities": graph.metadata.get("probabilities", ""),
        "seconds": round(time.perf_counter() - started, 3),
    }
