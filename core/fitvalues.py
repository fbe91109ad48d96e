"""The one parser of the Trainer's run values that the command line and the Python API share:
``--devices``, ``--distribute``'s names, the batch limits of a debug run, ``--learning-rate
auto``. No TensorFlow, no NumPy."""

from __future__ import annotations

import numbers
from typing import Any

from .errors import UsageError

DISTRIBUTIONS = ("auto", "mirrored", "multi-worker")  # the Trainer's tf.distribute strategies
AUTO_LR = "auto"  # --learning-rate auto: the first phase's rate from an lr-find sweep
SWEEP_KEYS = ("min_lr", "max_lr", "num_training", "early_stop_threshold")  # lr-find's own options


def learning_rates(value: Any, per_phase: Any) -> Any:
    """Learning rates, one or one per phase (``per_phase`` parses numbers: the options'
    ``_per_phase``), the first of which may be ``auto``."""
    values = [value] if isinstance(value, str | numbers.Real) else list(value or ())
    auto = [isinstance(v, str) and v.strip().lower() == AUTO_LR for v in values]
    if any(auto[1:]):
        raise UsageError("only the first phase's learning rate can be auto; give numbers after it")
    if auto and auto[0]:
        return (AUTO_LR, *(per_phase(values[1:], float, "learning rates") or ()))
    return per_phase(value, float, "learning rates")


def parse_devices(value: Any) -> int | None:
    """``--devices``: ``auto`` (None) or a whole number of at least 1."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        count = -1 if isinstance(value, bool) else int(str(value).strip())
    except ValueError:
        count = -1
    if count < 1:
        raise UsageError(f"--devices must be auto or a whole number of at least 1, got {value!r}")
    return count


def parse_batch_limit(value: Any, split: str) -> int | float | None:
    """``--limit-train-batches`` / ``--limit-val-batches``: a count (an int, or text without a
    point: ``10``) or a fraction in (0, 1] (a float, or text with a point: ``0.25``; ``1.0`` is
    all of them); None: no limit."""
    if value is None:
        return None
    text = str(value).strip()
    what = f"--limit-{split}-batches"
    try:
        number: int | float = (
            float(text) if isinstance(value, float) or "." in text or "e" in text else int(text)
        )
    except ValueError:
        raise UsageError(f"{what} takes a count (10) or a fraction (0.25), got {value!r}") from None
    if isinstance(value, bool) or number < 0 or (isinstance(number, float) and number > 1):
        raise UsageError(
            f"{what} takes a count of 0 or more or a fraction up to 1.0, got {value!r}"
        )
    return number


def check_run_values(
    overfit: int, accumulate: int, clip: float | None, scheduler: str | None, distribute: str
) -> None:
    """The fine-tune's debug, gradient and cluster values (``FinetuneOptions``)."""
    if int(overfit) < 0:
        raise UsageError(f"--overfit-batches must be 0 or more, got {overfit}")
    if int(accumulate) < 1:
        raise UsageError(f"--accumulate-grad-batches must be at least 1, got {accumulate}")
    if clip is not None and clip <= 0:
        raise UsageError(f"--gradient-clip-val must be positive, got {clip}")
    if scheduler is not None and distribute != "multi-worker":
        raise UsageError("--scheduler runs a multi-worker fine-tune; add --distribute multi-worker")


def check_sweep(min_lr: float, max_lr: float, num_training: int) -> None:
    """lr-find's sweep: ``0 < min_lr < max_lr`` over at least 2 batches."""
    if not 0 < min_lr < max_lr:
        raise UsageError(f"lr-find needs 0 < --min-lr < --max-lr, got {min_lr} and {max_lr}")
    if int(num_training) < 2:
        raise UsageError(f"lr-find needs at least 2 training batches, got {num_training}")


def batches(limit: int | float | None, total: int) -> int:
    """How many of ``total`` batches a limit keeps (a fraction keeps at least one)."""
    if limit is None:
        return total
    if isinstance(limit, float):
        return min(total, max(1, int(total * limit))) if total else 0
    return min(total, int(limit))
