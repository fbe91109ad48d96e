"""What ``finetune`` keeps in its ``model.keras`` so that ``predict`` can weigh each answer, and
how ``predict`` reads it back (:mod:`transferkit.trust` does the arithmetic, as for ``train``).

* **Unfamiliar inputs**: a seeded sample of at most ``reference_size`` training rows, each the
  fine-tuned network's own pooled penultimate features (the input of the head's last ``Dense``
  layer: after the head's pooling and dropout; a head that is not a ``Sequential`` with a
  ``Dense`` layer: the base's output, average-pooled), with the ``unfamiliar`` threshold from
  the sample's own leave-one-out scores (:func:`transferkit.trust.make_reference`). Only the
  sampled training images go through the network again, without augmentation.
* **Prediction sets**: split-conformal scores ``1 - p(true class)`` of the validation split's
  images, from the network's probabilities before any ``--calibrate`` temperature (the sets
  ``predict`` makes use the same untempered probabilities, so the temperature, fitted on the
  same split, never enters the quantile).

Both travel inside the ``.keras`` file as ``transferkit-trust.npz`` beside ``transferkit.json``:
NumPy arrays only, read with ``allow_pickle=False``; Keras ignores the extra member.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransferkitError
from ..reuse import file_key, reuse

log = logging.getLogger(__name__)

TRUST_FILE = "transferkit-trust.npz"


# ---------------------------------------------------------------------- at training


def _head_cut(head: Any) -> int | None:
    """The index of the last ``Dense`` layer of a ``Sequential`` head, or None."""
    import keras

    if not isinstance(head, keras.Sequential):
        return None
    found = [i for i, layer in enumerate(head.layers) if isinstance(layer, keras.layers.Dense)]
    return found[-1] if found else None


def feature_layer(model: Any) -> tuple[str, bool]:
    """The name of the layer of the exported graph whose input is the feature vector, and
    whether that input is a feature map to average-pool (a head that is not cut)."""
    cut = _head_cut(model.head)
    if cut is None:
        return str(model.head.name), True
    return str(model.head.layers[cut].name), False


def head_features(model: Any, images: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(features, probabilities)`` of preprocessed ``images`` through ``model`` (a
    ``TransferModel``) in inference mode: the head walked layer by layer as ``export`` lays it
    out, so the features are the ones :func:`feature_forward` reads from the saved file."""
    return head_outputs(model, model.base(images, training=False))


def head_outputs(model: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`head_features` from the base's output ``x`` (or the vectors the head's pooling
    makes of it)."""
    import keras

    from ..trainer.layers import PoolIfMap

    cut = _head_cut(model.head)
    if cut is None:
        probs = model.head(x, training=False)
        feats = keras.ops.mean(x, axis=(1, 2)) if len(x.shape) == 4 else x
    else:
        for i, layer in enumerate(model.head.layers):
            if i == cut:
                feats = x
            if isinstance(layer, PoolIfMap):
                x = keras.ops.mean(x, axis=(1, 2)) if len(x.shape) == 4 else x
                continue
            x = layer(x, training=False)
        probs = x
    as_numpy = keras.ops.convert_to_numpy
    return np.asarray(as_numpy(feats), np.float32), np.asarray(as_numpy(probs), np.float64)


def _pass(
    model: Any, dataset: Any, from_base: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ..trainer.bridge import quiet_end_of_data

    feats, probs, truth = [], [], []
    with quiet_end_of_data():
        for images, y in dataset:
            f, p = head_outputs(model, images) if from_base else head_features(model, images)
            feats.append(f)
            probs.append(p)
            truth.append(np.asarray(y).reshape(-1))
    return np.concatenate(feats), np.concatenate(probs), np.concatenate(truth).astype(int)


def trust_record(
    model: Any, data: Any, options: Any, cached: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """The record ``finetune`` saves (see the module docstring): ``reference``, ``mean``, ``k``,
    ``threshold``, ``quantile`` (with ``reference_size`` > 0), ``conformal`` (with
    ``conformal`` and a validation split), and ``layer``/``pool`` (where the features are
    read). Empty when neither is asked for. ``cached(split, rows)``: batches of the base's
    output for those images (the frozen-part cache's ``base_batches``), or None."""

    def passed(split: str, rows: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batches = cached(split, rows) if cached is not None else None
        if batches is not None:
            return _pass(model, batches, from_base=True)
        return _pass(model, data.dataset(rows) if split == "train" else data.val_dataset())

    from ..trust import conformal_scores, make_reference

    record: dict[str, Any] = {}
    if options.reference_size > 0 and len(data.train_indices) >= 2:
        rng = np.random.default_rng(options.seed)
        rows = np.sort(data.train_indices)
        if len(rows) > options.reference_size:
            rows = np.sort(rng.choice(rows, options.reference_size, replace=False))
        X = passed("train", rows)[0]
        record.update(make_reference(X, size=len(X), quantile=options.unfamiliar_quantile,
                                     seed=options.seed))  # fmt: skip
    if options.conformal:
        if len(data.val_indices):
            _, probs, y = passed("val")
            record["conformal"] = conformal_scores(probs, y, options.seed)
        else:
            log.warning("warning: no validation split, so no conformal scores; predict "
                        "--coverage will refuse this model (give --split a validation "
                        "fraction)")  # fmt: skip
    if record:
        layer, pooled = feature_layer(model)
        record.update(layer=layer, pool=pooled)
    return record


def record_bytes(record: dict[str, Any]) -> bytes:
    """``record`` as the bytes of an ``.npz`` (plain arrays: no pickle)."""
    buffer = io.BytesIO()
    arrays = {key: np.asarray(value) for key, value in record.items()}
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


# ---------------------------------------------------------------------- at prediction


def read_record(path: str | Path) -> dict[str, Any]:
    """The trust record inside a fine-tuned ``.keras`` file (empty in files without one),
    checked as ``train``'s is (:func:`transferkit.trust.check_trust`)."""
    from ..trust import check_trust

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if TRUST_FILE not in archive.namelist():
                return {}
            raw = archive.read(TRUST_FILE)
        with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
            found = {key: arrays[key] for key in arrays.files}
        record: dict[str, Any] = {
            key: value for key, value in found.items() if key not in ("k", "threshold",
                                                                      "quantile", "layer", "pool")
        }  # fmt: skip
        for key, kind in (("k", int), ("threshold", float), ("quantile", float),
                          ("layer", str), ("pool", bool)):  # fmt: skip
            if key in found:
                record[key] = kind(found[key].item())
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        # numpy's own text may advise loading with pickle: only the kind of error is named
        raise TransferkitError(
            f"{path} has a damaged {TRUST_FILE} ({type(exc).__name__}); fine-tune the model "
            "again to rewrite it"
        ) from None
    layer = record.pop("layer", None)
    pooled = record.pop("pool", False)
    why = check_trust(record, None)
    if why is None and record and not isinstance(layer, str):
        why = "it names no feature layer"
    if why is not None:
        raise TransferkitError(f"{path} has an unusable {TRUST_FILE}: {why}")
    if record:
        record["layer"], record["pool"] = layer, pooled
    return record


def trust_of(loaded: Any) -> dict[str, Any]:
    """:func:`read_record` of a loaded fine-tuned model, read once per file in a server."""
    return reuse(("finetuned-trust", file_key(loaded.path)), lambda: read_record(loaded.path))


def feature_forward(loaded: Any, record: dict[str, Any]) -> tuple[Any, int]:
    """A forward function giving each image's features and class probabilities side by side
    (one pass through the loaded network), and its width."""

    def build() -> tuple[Any, int]:
        import keras

        network = loaded.model
        try:
            inner = network.get_layer(record["layer"]).input
        except (ValueError, AttributeError) as exc:
            raise TransferkitError(
                f"{loaded.path} has no layer {record['layer']!r} to read its features from: "
                f"{str(exc)[:200]}"
            ) from None
        both = keras.Model(network.inputs, [inner, network.outputs[0]])
        width = int(inner.shape[-1]) + len(loaded.label_names)

        def forward(images: Any) -> Any:
            feats, probs = both(images, training=False)
            if len(feats.shape) == 4:
                feats = keras.ops.mean(feats, axis=(1, 2))
            return keras.ops.concatenate(
                [keras.ops.cast(feats, "float32"), keras.ops.cast(probs, "float32")], axis=-1
            )

        return forward, width

    return reuse(("finetuned-features", file_key(loaded.path)), build)


def fields(
    record: dict[str, Any], feats: np.ndarray, probs: np.ndarray, names: list[str],
    coverage: float | None,
) -> dict[str, list[Any]]:  # fmt: skip
    """Per-image ``ood_score``/``unfamiliar`` and, with ``coverage``, ``prediction_set`` (class
    names, most probable first), as ``predict`` gives them for ``train``'s models."""
    from ..trust import conformal_threshold, ood_scores, prediction_sets

    found: dict[str, list[Any]] = {}
    if "reference" in record:
        if feats.shape[1] != record["reference"].shape[1]:
            raise TransferkitError(
                f"the model's reference sample has {record['reference'].shape[1]} features, its "
                f"network gives {feats.shape[1]}; the file is damaged"
            )
        scores = ood_scores(feats, record)
        found["ood_score"] = [float(v) for v in scores]
        found["unfamiliar"] = [bool(v > record["threshold"]) for v in scores]
    if coverage is not None:
        threshold = conformal_threshold(record["conformal"], coverage)
        found["prediction_set"] = [
            [names[k] for k in chosen] for chosen in prediction_sets(probs, threshold)
        ]
    return found


def describe(record: dict[str, Any]) -> dict[str, Any]:
    """What a summary says of the record (sizes, not the arrays)."""
    said: dict[str, Any] = {}
    if "reference" in record:
        said.update(reference_rows=int(len(record["reference"])),
                    unfamiliar_threshold=float(record["threshold"]))  # fmt: skip
    if "conformal" in record:
        said["conformal_scores"] = int(len(record["conformal"]))
    return json.loads(json.dumps(said))


def trust_fields_of(
    loaded: Any, paths: list[str], batch_size: int, runtime: str, coverage: float | None
) -> tuple[np.ndarray, np.ndarray, dict[str, list[Any]], dict[str, Any]]:
    """``(probabilities, rows, per-image fields, result fields)`` of ``paths`` through a loaded
    fine-tuned model: its own probabilities (before any temperature) as
    ``predict_files`` gives them, and :func:`fields` from its trust record, read in the same pass
    on Keras (another runtime runs the classifier, and Keras then reads the features). A model
    without conformal scores refuses ``coverage`` in one line."""
    record = trust_of(loaded)
    check_coverage(loaded, record, coverage)
    said: dict[str, Any] = {}
    if coverage is not None:
        said["coverage"] = coverage
    if "reference" in record:
        said["unfamiliar_threshold"] = float(record["threshold"])
    if not record:
        probs, rows = loaded.predict_files(paths, batch_size=batch_size, runtime=runtime)
        return probs, rows, {}, said
    forward, width = feature_forward(loaded, record)
    both, rows = loaded.predict_files(paths, batch_size=batch_size, forward=forward, width=width)
    n = len(loaded.label_names)
    feats, probs = both[:, : width - n], both[:, width - n :]
    if runtime not in ("keras", "auto", "", None):
        probs, rows = loaded.predict_files(paths, batch_size=batch_size, runtime=runtime)
    names = list(loaded.label_names)
    return probs, rows, fields(record, feats, np.asarray(probs), names, coverage), said


def check_coverage(loaded: Any, record: dict[str, Any], coverage: float | None) -> None:
    """Refuse ``coverage`` for a fine-tuned model whose record keeps no conformal scores."""
    from ..errors import UsageError

    if coverage is not None and "conformal" not in record:
        raise UsageError(
            f"{loaded.path} is a fine-tuned model, which keeps no conformal scores (saved "
            "without a validation split or with --no-conformal); fine-tune it again with a "
            "validation fraction in --split to use --coverage"
        )


def batch_fields(
    loaded: Any, runtime: str, coverage: float | None, batch_size: int
) -> Callable[[Any], tuple[np.ndarray, dict[str, list[Any]]]]:
    """:func:`trust_fields_of` as a function of one preprocessed batch (a server's): the
    model's probabilities (before any temperature) and the per-image fields of its trust
    record, from the same networks. The Keras part runs as one ``tf.function`` whose batch
    size is left open, so no batch size traces it again."""
    import tensorflow as tf

    record = trust_of(loaded)
    check_coverage(loaded, record, coverage)
    names = list(loaded.label_names)
    n = len(names)
    other = None
    if runtime not in ("keras", "auto", "", None):
        other = loaded.runtime_forward(runtime, batch_size, batch_size)
    keras_part, width = None, n
    if record or other is None:
        if record:
            network, width = feature_forward(loaded, record)
        else:
            network = lambda images: loaded.model(images, training=False)  # noqa: E731
        h, w = loaded.input_size
        keras_part = tf.function(
            network,
            input_signature=[tf.TensorSpec((None, h, w, 3), tf.float32)],
            reduce_retracing=True,
        )

    def run(images: Any) -> tuple[np.ndarray, dict[str, list[Any]]]:
        rows = len(images)
        both = None
        if keras_part is not None:
            both = np.asarray(keras_part(images), np.float32).reshape(rows, -1)
        if other is not None:
            probs = np.asarray(other(images), np.float32).reshape(rows, -1)
        else:
            assert both is not None
            probs = both[:, width - n :]
        if not record or both is None:
            return probs, {}
        return probs, fields(record, both[:, : width - n], probs, names, coverage)

    return run
