"""``transferkit predict``: classify new images with a model saved by ``train`` or ``stream``.

The model file carries the recipe of its features (backbone, weights, input size, pooling); the
images go through the same backbone and input pipeline as at extraction, and the classifier gives
a class and its probability for each. Images that cannot be decoded are reported, not fatal.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import estimators, inference, registry
from ..errors import TransferkitError, UsageError
from ..models import SavedModel, identify_file, load_model
from ..options import PredictOptions
from ..pooling import pool
from ..reuse import reuse
from ..store import path_text

log = logging.getLogger(__name__)


def image_paths(images: list[str] | tuple[str, ...]) -> list[str]:
    """Files as given, folders expanded to the image files under them (sorted)."""
    from ..images import IMAGE_SUFFIXES

    found: list[str] = []
    for item in images:
        path = Path(item)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                found.extend(
                    os.path.join(dirpath, f)
                    for f in sorted(filenames)
                    if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
                )
        elif path.exists():
            found.append(str(path))
        else:
            raise UsageError(f"image {item} does not exist")
    if not found:
        raise UsageError("no images to predict; pass image files or folders of images")
    return found


def check_precision(saved: SavedModel, precision: Any, model_path: Any = "the model") -> str:
    """The precision to compute features at: the model's own; a different one (as
    :class:`~transferkit.options.PredictOptions` parsed it) is refused."""
    own = saved.recipe.precision
    if precision is None or precision == "":
        return own
    asked = precision
    if asked != own:
        raise UsageError(
            f"{model_path} was trained on {own}-bit features ({saved.recipe.backbone}); "
            f"features made at precision {asked} would not be the same; predict with "
            f"--precision {own} (or leave --precision out)"
        )
    return own


def feature_network(saved: SavedModel) -> tuple[str, Any]:
    """The registered name of the backbone of ``saved``'s features, and that backbone built with
    the model's weights and input size and pooled as its features were (checked to give as
    many features as the model takes)."""
    recipe = saved.recipe
    spec = registry.backbone(recipe.backbone)
    backbone = pool(
        spec.factory(weights=recipe.weights, input_size=recipe.input_size), recipe.pooling
    )
    if saved.feature_dim and backbone.feature_dim != saved.feature_dim:
        raise TransferkitError(
            f"backbone {recipe.backbone} now gives {backbone.feature_dim} features but the model "
            f"was trained on {saved.feature_dim}; was the backbone plugin changed?"
        )
    return spec.name, backbone


def network(
    saved: SavedModel,
    *,
    runtime: str = "auto",
    precision: Any = None,
    images: int = 0,
    batch_size: int = 32,
) -> tuple[Any, inference.Forward]:
    """The pooled backbone of ``saved``'s features and its forward function on ``runtime``, at
    the model's own precision (``precision`` other than that is refused); ``images`` and
    ``batch_size`` are what :func:`transferkit.inference.build_forward` weighs for ``auto``."""
    recipe = saved.recipe
    if not recipe.backbone:
        raise UsageError(
            "this model's store did not record which backbone made its features (a classic "
            "store?), so new images cannot be turned into the same features; train on a store "
            "written by `transferkit extract`"
        )
    precision = check_precision(saved, precision)

    def build() -> tuple[Any, inference.Forward]:
        name, backbone = feature_network(saved)
        forward = inference.build_forward(
            backbone,
            backbone=name,
            runtime=runtime,
            precision=precision,
            images=images,
            batch_size=batch_size,
        )
        return backbone, forward

    # built once per recipe and runtime inside a `with reuse.kept():` (a server), else per call
    key = ("predict-network", recipe, recipe.runtime, saved.feature_dim, runtime, precision)
    built: tuple[Any, inference.Forward] = reuse(key, build)
    return built


def extract_features(
    saved: SavedModel,
    paths: list[str],
    batch_size: int = 32,
    *,
    runtime: str = "auto",
    precision: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``paths`` made as the model's training features were: ``(X, rows)`` where
    ``rows`` are the indices of the images that decoded. ``runtime`` runs the network at the
    model's own precision (``precision`` other than that is refused)."""
    from ..pipeline import map_files

    backbone, forward = network(
        saved, runtime=runtime, precision=precision, images=len(paths), batch_size=batch_size
    )
    return map_files(
        forward,
        paths,
        input_size=backbone.input_size,
        preprocess=backbone.preprocess,
        width=backbone.feature_dim,
        batch_size=batch_size,
        resize=backbone.resize,
    )


def predict(
    model_path: str | Path, images: list[str] | tuple[str, ...], *, options: PredictOptions
) -> dict[str, Any]:
    """Predicted class and probability for each image; ``top`` > 1 adds the runners-up.

    ``runtime`` runs the backbone (``auto``, ``keras``, ``openvino``, ``litert``); the features
    are made at the model's own precision, and a ``precision`` other than that is refused.
    Images under a labelled folder (one sub-folder per class, named as the model's classes) also
    get their ``true`` class, and the result the ``accuracy`` over them; ``out`` (a ``.png``)
    then receives their confusion matrix with the class names. ``csv`` also writes one row per
    image to that file (:func:`write_csv`); the result's ``csv`` is its path.
    """
    if options.csv is not None:
        check_csv(options.csv, images)
    result = _predict(model_path, images, options)
    if options.csv is not None:
        result["csv"] = str(write_csv(result, options.csv))
    return result


def _predict(
    model_path: str | Path, images: list[str] | tuple[str, ...], options: PredictOptions
) -> dict[str, Any]:
    from ..trainer.saved import is_finetuned

    batch_size, top, runtime, precision = (
        options.batch_size,
        options.top,
        options.runtime,
        options.precision,
    )

    if is_finetuned(model_path) or (  # a classifier saved by `transferkit finetune`
        Path(model_path).is_file() and identify_file(model_path) == "keras"
    ):
        from .finetune import predict_finetuned

        result = predict_finetuned(
            model_path, image_paths(images), batch_size=batch_size, top=top, runtime=runtime,
            coverage=options.coverage,
        )  # fmt: skip
        return with_truth(result, images, options.out)
    saved = load_model(model_path, trust=options.trust)
    check_precision(saved, precision, model_path)
    check_coverage(saved, options.coverage, model_path)
    paths = image_paths(images)
    names = saved.label_names
    log.info(
        f"predicting {len(paths)} image(s) with {saved.classifier} on {saved.recipe.backbone} "
        "features"
    )
    X, rows = extract_features(saved, paths, batch_size, runtime=runtime, precision=precision)
    results: list[dict[str, Any]] = []
    by_row: dict[int, dict[str, Any]] = {}
    if len(X):
        found = answers(saved, X, top, options.coverage, model_path)
        for row, entry in zip(rows.tolist(), found, strict=True):
            by_row[row] = {"path": path_text(paths[row]), "status": "ok", **entry}
    if len(by_row) < len(paths):
        from ..images import ImageRecord, ImageSource
        from ..pipeline import skip_reason

        source = ImageSource([ImageRecord(p, 0) for p in paths], names or ["?"])
    for row, path in enumerate(paths):
        if row in by_row:
            results.append(by_row[row])
        else:
            reason = skip_reason(source, row)
            results.append({"path": path_text(path), "status": "skipped", "reason": reason})
    return with_truth(
        {
            "model": str(model_path),
            "classifier": saved.classifier,
            "backbone": saved.recipe.backbone,
            "label_names": list(names),
            "predictions": results,
            **({"coverage": options.coverage} if options.coverage is not None else {}),
            **(
                {"unfamiliar_threshold": float(saved.trust["threshold"])}
                if "reference" in saved.trust
                else {}
            ),
        },
        images,
        options.out,
    )


def check_coverage(saved: SavedModel, coverage: float | None, model_path: Any) -> None:
    """Refuse ``coverage`` for a model that keeps no conformal scores."""
    if coverage is not None and "conformal" not in saved.trust:
        raise UsageError(
            f"{model_path} keeps no conformal scores, so it cannot make prediction sets; "
            "save it with `transferkit train --out` (without --no-conformal) to use --coverage"
        )


def answers(
    saved: SavedModel, X: np.ndarray, top: int, coverage: float | None, model_path: Any
) -> list[dict[str, Any]]:
    """Each row of features ``X``'s answer from ``saved``'s classifier: ``label``, ``index``,
    ``probability``, with ``top`` > 1 the ``top`` most probable classes, and
    :func:`trust_fields` (what ``predict`` gives an image, less its path and status)."""
    names = saved.label_names
    classes = np.arange(len(names))
    fitted = estimators.as_fitted(saved.estimator, classes)
    labels = estimators.predict(fitted, X)
    outside = sorted({int(v) for v in labels} - set(range(len(names))))
    if outside:  # an estimator without classes_ to check when it was loaded
        raise TransferkitError(
            f"{model_path} predicted class index {outside[0]} but names only "
            f"{len(names)} classes; the model file is damaged or was not saved by transferkit"
        )
    proba = estimators.predict_proba(fitted, X, classes)
    extra = trust_fields(saved, X, proba, coverage)
    found = []
    for i in range(len(X)):
        label = int(labels[i])
        ranked = np.argsort(-proba[i])[: max(1, top)]
        entry: dict[str, Any] = {
            "label": names[label] if 0 <= label < len(names) else str(label),
            "index": label,
            "probability": float(proba[i][label]) if 0 <= label < len(names) else None,
        }
        if top > 1:
            entry["top"] = [{"label": names[k], "probability": float(proba[i][k])} for k in ranked]
        entry.update({key: values[i] for key, values in extra.items()})
        found.append(entry)
    return found


def trust_fields(
    saved: SavedModel, X: np.ndarray, proba: np.ndarray, coverage: float | None
) -> dict[str, list[Any]]:
    """Per-image fields from the model's trust record (:mod:`transferkit.trust`): ``ood_score``
    and ``unfamiliar`` where it keeps a reference sample, ``prediction_set`` (class names, most
    probable first) with ``coverage``."""
    from ..trust import conformal_threshold, ood_scores, prediction_sets

    fields: dict[str, list[Any]] = {}
    trust = saved.trust
    if "reference" in trust:
        scores = ood_scores(X, trust)
        fields["ood_score"] = [float(v) for v in scores]
        fields["unfamiliar"] = [bool(v > trust["threshold"]) for v in scores]
    if coverage is not None:
        threshold = conformal_threshold(trust["conformal"], coverage)
        names = saved.label_names
        fields["prediction_set"] = [
            [names[k] for k in chosen] for chosen in prediction_sets(proba, threshold)
        ]
    return fields


def true_labels(images: list[str] | tuple[str, ...], names: list[str]) -> dict[str, str]:
    """Image path -> its class, for the images under a labelled folder: one whose files all lie
    in sub-folders, at least one of them named as a class of the model."""
    truth: dict[str, str] = {}
    for item in images:
        folder = Path(item)
        if not folder.is_dir():
            continue
        found = {p: Path(os.path.relpath(p, folder)).parts for p in image_paths([str(folder)])}
        if any(len(parts) < 2 for parts in found.values()):
            continue  # loose files at the top: not a labelled folder
        if not {parts[0] for parts in found.values()} & set(names):
            continue
        truth.update({p: parts[0] for p, parts in found.items()})
    return truth


def with_truth(
    result: dict[str, Any], images: list[str] | tuple[str, ...], out: str | Path | None
) -> dict[str, Any]:
    """Add ``true`` to the predictions of labelled images, ``accuracy`` and ``labelled`` to the
    result, and with ``out`` the confusion matrix picture (``confusion`` is its path)."""
    names = list(result.get("label_names") or [])
    truth = true_labels(images, names)
    if not truth:
        if out is not None:
            raise UsageError(
                "--out draws the confusion matrix of labelled images: pass a folder with one "
                "sub-folder per class, named as the model's classes"
            )
        return result
    labelled = [p for p in result["predictions"] if p["path"] in truth]
    for p in labelled:
        p["true"] = truth[p["path"]]
    scored = [p for p in labelled if p["status"] == "ok"]
    correct = sum(p["label"] == p["true"] for p in scored)
    result["labelled"] = len(scored)
    result["accuracy"] = correct / len(scored) if scored else None
    if out is not None:
        from .spotcheck_report import confusion_picture

        classes = names + sorted({p["true"] for p in scored} - set(names))
        index = {n: i for i, n in enumerate(classes)}
        matrix = np.zeros((len(classes), len(classes)), dtype=int)
        for p in scored:
            if p["label"] in index:
                matrix[index[p["true"]], index[p["label"]]] += 1
        path = Path(out)
        if path.suffix.lower() != ".png":
            raise UsageError(f"--out is the confusion matrix picture, a .png file; got {out}")
        path.parent.mkdir(parents=True, exist_ok=True)
        confusion_picture(
            matrix.tolist(), classes, path, title=f"{result.get('classifier')}, accuracy "
            f"{result['accuracy']:.3f} on {len(scored)} images",
        )  # fmt: skip
        result["confusion"] = str(path)
    return result


CSV_FIELDS = ("path", "label", "probability", "ood_score", "unfamiliar", "prediction_set", "status")


def check_csv(path: str | Path, images: list[str] | tuple[str, ...]) -> None:
    """Before any work: refuse a ``--csv`` path that is or touches an input, or an existing file
    that is not a predictions CSV transferkit wrote (its first line is :data:`CSV_FIELDS`)."""
    from ..outputs import check_outside_inputs, check_writable, refuse_replacing

    check_outside_inputs(path, list(images), "predictions file")
    if os.path.lexists(path):
        try:
            with open(path, encoding="utf-8", newline="") as fh:
                first = fh.readline().strip()
        except (OSError, UnicodeDecodeError):
            first = ""
        if first != ",".join(CSV_FIELDS):
            raise refuse_replacing(path, "predictions file", "a predictions CSV transferkit wrote")
    check_writable(path)


def write_csv(result: dict[str, Any], path: str | Path) -> Path:
    """One row per image of ``result`` (:data:`CSV_FIELDS`; a field the model does not give is
    empty, a skipped image has its reason as ``status``), written atomically."""
    import csv
    import io

    from ..outputs import atomic_write_text

    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(CSV_FIELDS))
    writer.writeheader()
    for p in result["predictions"]:
        ok = p["status"] == "ok"
        chosen = p.get("prediction_set")
        writer.writerow(
            {
                "path": p["path"],
                "label": p.get("label", ""),
                "probability": "" if p.get("probability") is None else f"{p['probability']:.6f}",
                "ood_score": f"{p['ood_score']:.6f}" if "ood_score" in p else "",
                "unfamiliar": str(p["unfamiliar"]).lower() if "unfamiliar" in p else "",
                "prediction_set": "|".join(chosen) if chosen is not None else "",
                "status": "ok" if ok else f"skipped: {p.get('reason', '')}",
            }
        )
    return atomic_write_text(path, table.getvalue())
