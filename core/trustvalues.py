"""The one check of the values of calibration, unfamiliar inputs, prediction sets and the audit
(:class:`~transferkit.options.TrainOptions`, ``StreamOptions``, ``PredictOptions``,
``FinetuneOptions``, ``AuditOptions``), with their longer help texts. No NumPy."""

from __future__ import annotations

from typing import Any

from .errors import UsageError

CALIBRATIONS = ("temperature", "sigmoid", "isotonic")
CALIBRATE_HELP = (
    "Calibrate the probabilities on held-out folds of the training rows and save the calibrated "
    "model: temperature (one temperature), sigmoid or isotonic (scikit-learn's "
    "CalibratedClassifierCV)."
)
CONFORMAL_HELP = (
    "With --out, keep conformal scores from held-out folds so that `predict --coverage` gives "
    "prediction sets (--conformal-folds more fits)."
)
CONFORMAL_FOLDS_HELP = (
    "Folds of the held-out probabilities behind the conformal scores: more folds, copies closer "
    "to the saved model (fitted on (k - 1) / k of the rows) and sets closer to the coverage asked "
    "for; fewer, fewer fits and larger sets. A kept sigmoid or isotonic calibration scores on "
    "its own --folds instead."
)
FINETUNE_CONFORMAL_HELP = (
    "Keep conformal scores of the validation split in model.keras so that `predict --coverage` "
    "gives prediction sets."
)
REFERENCE_HELP = (
    "With --out, training rows kept in the model (a seeded sample) to score how unfamiliar a new "
    "image is (predict's ood_score); 0: none."
)
QUANTILE_HELP = (
    "Quantile of the training rows' own ood_score above which predict calls an image unfamiliar "
    "(about 1 - q of in-domain images are flagged)."
)
COVERAGE_HELP = (
    "Add a prediction set per image holding the true class with this probability (split "
    "conformal, e.g. 0.9), from the held-out scores `train --out` keeps."
)

CSV_HELP = (
    "Also write the predictions to this CSV file: path, label, probability, ood_score, "
    "unfamiliar, prediction_set (class names joined by |), status."
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_trust(options: Any) -> None:
    """``reference_size`` (0 or more), ``unfamiliar_quantile`` (0 to 1) and, where the options
    have them, ``folds`` and ``conformal_folds`` (at least 2)."""
    if options.reference_size < 0:
        raise UsageError(f"--reference-size must be 0 or more, got {options.reference_size}")
    if not 0 < options.unfamiliar_quantile < 1:
        raise UsageError(
            f"--unfamiliar-quantile must be between 0 and 1, got {options.unfamiliar_quantile}"
        )
    check_folds(getattr(options, "folds", 2))
    check_folds(getattr(options, "conformal_folds", 2), "--conformal-folds")


def check_folds(folds: int, flag: str = "--folds") -> None:
    if folds < 2:
        raise UsageError(f"{flag} must be at least 2, got {folds}")


def check_coverage(coverage: float | None) -> None:
    if coverage is not None and not 0 < coverage < 1:
        raise UsageError(f"--coverage must be between 0 and 1, got {coverage}")


def check_calibrate_split(calibrate: bool, split: tuple[float, ...]) -> None:
    """``finetune --calibrate`` needs a validation fraction."""
    if calibrate and split[1] <= 0:
        raise UsageError(
            "--calibrate fits the temperature on the validation split; give it a validation "
            "fraction (--split)"
        )


def check_audit(options: Any) -> None:
    check_folds(options.folds)
    for name in ("k", "outlier_fence"):
        if getattr(options, name) <= 0:
            raise UsageError(f"{_flag(name)} must be positive, got {getattr(options, name)}")
    for name in ("duplicate_similarity", "leakage_similarity"):
        value = getattr(options, name)
        if not -1 <= value <= 1:
            raise UsageError(f"{_flag(name)} is a cosine similarity, -1 to 1; got {value}")
