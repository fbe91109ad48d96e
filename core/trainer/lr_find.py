"""lr-find: the learning-rate range test (Smith 2015; Lightning's ``Tuner.lr_find``, fastai's
``lr_find``).

From the run's start state (the strategy's first phase: its trainable layers and optimizer), the
learning rate grows exponentially from ``min_lr`` to ``max_lr`` over ``num_training`` training
batches, one rate per batch; the loss of each batch is smoothed (an exponential moving average,
bias-corrected) and the sweep stops early once the smoothed loss exceeds
``early_stop_threshold`` times the best one (divergence). Two suggestions are read off the curve:

* ``steepest``: the rate where the smoothed loss falls fastest (Lightning's suggestion);
* ``valley``: fastai's, a rate inside the longest stretch over which the loss keeps falling,
  which a noisy curve moves less; ``suggestion`` is the valley (the steepest point where there is
  no valley).

Every variable of the model (and every layer's ``trainable`` flag) is put back afterwards, so a
fit that follows starts where the sweep started.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fitvalues import check_sweep
from .bridge import quiet_end_of_data
from .limits import gradient_options
from .model import iter_layers

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

log = logging.getLogger(__name__)

PLOT_FILE = "lr_find.png"
JSON_FILE = "lr_find.json"


@dataclass
class LrFindResult:
    """The sweep: each batch's ``learning_rates`` and ``losses`` (smoothed; ``raw_losses`` as
    measured), the two suggestions and whether divergence stopped it."""

    phase: str
    learning_rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    raw_losses: list[float] = field(default_factory=list)
    steepest: float | None = None
    valley: float | None = None
    diverged: bool = False

    @property
    def suggestion(self) -> float | None:
        return self.valley if self.valley is not None else self.steepest

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "suggestion": self.suggestion}


def steepest(losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> int | None:
    """The index where the smoothed loss falls fastest, the first ``skip_begin`` and last
    ``skip_end`` points left out (Lightning's; None when fewer than 3 points remain)."""
    part = np.asarray(losses[skip_begin : len(losses) - skip_end], dtype=np.float64)
    if len(part) < 3 or not np.all(np.isfinite(part)):
        return None
    return int(np.argmin(np.gradient(part))) + skip_begin


def valley(losses: list[float]) -> int | None:
    """fastai's valley: the index a third and a sixth of the way along the longest run of
    points with ever lower losses (a longest decreasing subsequence); None when the loss never
    falls."""
    n = len(losses)
    if n < 2:
        return None
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    if max_end == 0:
        return None
    sections = (max_end - max_start) / 3
    return int(max_start + int(sections) + int(sections / 2))


def _sweep_dataset(trainer: Trainer, steps: int) -> Any:
    """``steps`` training batches: the first epoch's, over again as often as needed."""
    return trainer._train_dataset(0).repeat().take(steps)


def run_lr_find(
    trainer: Trainer,
    *,
    min_lr: float = 1e-8,
    max_lr: float = 1.0,
    num_training: int = 100,
    early_stop_threshold: float | None = 4.0,
    beta: float = 0.98,
    start: Callable[[Trainer], Any] | None = None,
) -> LrFindResult:
    """The sweep on ``trainer.model`` and ``trainer.data`` with ``trainer.strategy``'s first
    phase (the Trainer set them; :meth:`Trainer.lr_find` is the entry point). ``start`` puts the
    model in the run's start state once the phase's layers are frozen (``finetune`` starts the
    head at the linear probe, as its ``fit`` does); the model is restored from before it."""
    import keras

    check_sweep(min_lr, max_lr, num_training)
    model, strategy = trainer.model, trainer.strategy
    keras_model = model.keras_model
    saved = [np.asarray(v.numpy()) for v in keras_model.variables]
    flags = [(layer, layer.trainable) for layer in iter_layers(keras_model)]
    start_state = strategy.state_dict()
    try:
        strategy.freeze_before_training(model)
        strategy.skip_empty_phases(0)
        strategy.on_epoch_start(model, 0)
        if start is not None:
            start(trainer)
        phase = strategy.phase
        model.set_base_lr_multiplier(phase.base_lr_multiplier)
        optimizer = gradient_options(
            phase.make_optimizer(), trainer.accumulate_grad_batches, trainer.gradient_clip_val
        )
        model.compile(optimizer, jit_compile=trainer.jit_compile)
        result = LrFindResult(phase=phase.name)
        ratio = max_lr / min_lr
        state = {"average": 0.0, "best": math.inf}

        class Sweep(keras.callbacks.Callback):  # type: ignore[misc]
            def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
                rate = min_lr * ratio ** (batch / (num_training - 1))
                self.model.optimizer.learning_rate = rate
                self.model.reset_metrics()  # the logs are then this batch's loss
                state["rate"] = float(rate)

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                loss = float((logs or {}).get("loss", math.nan))
                state["average"] = beta * state["average"] + (1 - beta) * loss
                smoothed = state["average"] / (1 - beta ** (batch + 1))
                result.learning_rates.append(state["rate"])
                result.raw_losses.append(loss)
                result.losses.append(float(smoothed))
                if not math.isfinite(smoothed) or (
                    early_stop_threshold is not None
                    and smoothed > early_stop_threshold * state["best"]
                ):
                    result.diverged = True
                    self.model.stop_training = True
                state["best"] = min(state["best"], smoothed)

        with quiet_end_of_data():
            keras_model.fit(
                _sweep_dataset(trainer, num_training),
                epochs=1,
                callbacks=[Sweep()],
                shuffle=False,
                verbose=0,
            )
    finally:
        for variable, value in zip(keras_model.variables, saved, strict=True):
            variable.assign(value)
        for layer, trainable in flags:
            layer.trainable = trainable
        strategy.load_state_dict(start_state)
    losses = result.losses[:-1] if result.diverged else result.losses  # the diverged point
    at = steepest(losses)
    result.steepest = result.learning_rates[at] if at is not None else None
    at = valley(losses)
    result.valley = result.learning_rates[at] if at is not None else None
    log.info(
        f"lr-find ({phase.name}): {len(result.losses)} batches from {min_lr:g}"
        f"{', stopped at divergence' if result.diverged else ''}; suggestion "
        f"{result.suggestion if result.suggestion is not None else 'none'}"
    )
    return result


def plot_lr_find(result: LrFindResult, path: str | Path) -> Path:
    """Loss (smoothed, and as measured) against the learning rate on a log scale, with the two
    suggestions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(result.learning_rates, result.raw_losses, color="lightgrey", linewidth=1,
            label="loss of each batch")  # fmt: skip
    ax.plot(result.learning_rates, result.losses, color="C0", label="smoothed loss")
    for rate, name, colour in (
        (result.steepest, "steepest", "C1"),
        (result.valley, "valley", "C2"),
    ):
        if rate is not None:
            ax.axvline(rate, color=colour, linestyle="--", linewidth=1, label=f"{name} {rate:.2g}")
    finite = [v for v in result.losses if math.isfinite(v)]
    if finite:
        low, high = min(finite), min(max(finite), 4 * min(finite) + 1e-9)
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(f"lr-find, phase {result.phase}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def save_lr_find(result: LrFindResult, folder: str | Path) -> dict[str, Any]:
    """``lr_find.png`` and ``lr_find.json`` (the curve and the suggestions) in ``folder``."""
    from ..outputs import atomic_write_text

    folder = Path(folder)
    data = result.to_dict()
    data["plot"] = str(plot_lr_find(result, folder / PLOT_FILE))
    data["json"] = str(folder / JSON_FILE)
    atomic_write_text(folder / JSON_FILE, json.dumps(data, indent=2))
    return data
