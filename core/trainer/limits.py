"""Debug runs: how many batches the Trainer trains and validates on (Lightning's
``fast_dev_run``, ``limit_train_batches``, ``limit_val_batches`` and ``overfit_batches``), and the
optimizer's gradient options (``accumulate_grad_batches``, ``gradient_clip_val``).

A limited epoch is one ``fit`` call over the first batches of that epoch's order, so a limited
run still sees the batches an unlimited run begins each epoch with. ``overfit_batches=N`` trains
on the same first N batches (the training indices in their split order) every epoch and validates
on them too: a model that cannot drive their loss down has a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..fitvalues import batches, parse_batch_limit


@dataclass(frozen=True)
class BatchLimits:
    """What a debug run limits (None: nothing). ``fast_dev_run`` is one training and one
    validation batch in each phase's one epoch, and no checkpoint."""

    train: int | float | None = None
    val: int | float | None = None
    overfit: int = 0
    fast_dev_run: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "train", parse_batch_limit(self.train, "train"))
        set_(self, "val", parse_batch_limit(self.val, "val"))
        if int(self.overfit) < 0:
            raise UsageError(f"overfit_batches must be 0 or more, got {self.overfit}")
        if self.fast_dev_run:
            set_(self, "train", 1)
            set_(self, "val", 1)
        if self.train == 0:
            raise UsageError("limit_train_batches 0 trains nothing; give at least 1 (or 0.1)")

    @property
    def active(self) -> bool:
        return self.train is not None or self.val is not None or self.overfit > 0

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v not in (None, 0, False)}

    # ------------------------------------------------------------------ datasets

    def _overfit_rows(self, data: Any) -> Any:
        return data.train_indices[: self.overfit * data.batch_size]

    def train_dataset(self, data: Any, epoch: int) -> tuple[Any, int]:
        """Epoch ``epoch``'s limited training batches and their count."""
        if self.overfit:
            rows = self._overfit_rows(data)
            total = -(-len(rows) // data.batch_size)
            return data.dataset(rows).take(batches(self.train, total)), batches(self.train, total)
        count = batches(self.train, data.steps_per_epoch)
        return data.train_dataset(epoch).take(count), count

    def eval_dataset(self, data: Any, split: str) -> Any:
        """The limited validation (``val``) or test batches (None where there are none)."""
        if self.overfit and split == "val":
            return self.train_dataset(data, 0)[0]
        dataset = data.val_dataset() if split == "val" else data.test_dataset()
        indices = data.val_indices if split == "val" else data.test_indices
        if dataset is None or self.val is None:
            return dataset
        count = batches(self.val, -(-len(indices) // data.batch_size))
        return dataset.take(count) if count else None

    def has_validation(self, data: Any) -> bool:
        if self.overfit:
            return True
        return len(data.val_indices) > 0 and self.val != 0


def gradient_options(optimizer: Any, accumulate: int = 1, clip: float | None = None) -> Any:
    """``optimizer`` with gradients averaged over ``accumulate`` batches before each step (as
    one ``accumulate`` times larger batch: Keras' ``gradient_accumulation_steps``) and their
    global norm clipped to ``clip`` (Keras' ``global_clipnorm``); itself when neither is set."""
    if accumulate <= 1 and clip is None:
        return optimizer
    config = dict(optimizer.get_config())
    if accumulate > 1:
        config["gradient_accumulation_steps"] = int(accumulate)
    if clip is not None:
        config.update(clipnorm=None, clipvalue=None, global_clipnorm=float(clip))
    return type(optimizer).from_config(config)
