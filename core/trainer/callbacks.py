"""Trainer callbacks: early stopping, checkpoints (best and last, for resume), learning-rate
logging, CSV/JSON history and per-epoch progress.

Callbacks run between epochs, never inside the compiled training step, so they cost nothing per
step. A callback with state implements ``state_dict``/``load_state_dict``: the Trainer saves that
state with each checkpoint and restores it on resume.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from .strategy import Phase
    from .trainer import Trainer

log = logging.getLogger(__name__)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (none is left behind
    on an error, which is one line naming the path)."""
    from ..outputs import atomic_write_text as write

    write(path, text)


class Callback:
    """Base class; every method is optional."""

    def setup(self, trainer: Trainer) -> None:
        """Check the configuration before training starts (raise ``UsageError``)."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_phase_start(self, trainer: Trainer, phase: Phase) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_train_batch_end(
        self, trainer: Trainer, batch: int, steps: int | None, logs: dict[str, float]
    ) -> None:
        """After training batch ``batch`` (0-based) of ``steps`` in this epoch (None: unknown).
        Called only for callbacks that override it, so others cost nothing per batch."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        """After the epoch's training and validation; ``logs`` may be extended."""

    def on_phase_end(self, trainer: Trainer, phase: Phase, results: dict[str, Any]) -> None: ...

    def on_epoch_complete(self, trainer: Trainer, epoch: int) -> None:
        """After the epoch and any phase change it caused: the state a checkpoint holds."""

    def on_fit_end(self, trainer: Trainer, result: dict[str, Any]) -> None: ...

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @property
    def state_key(self) -> str:
        return type(self).__name__


def _mode_for(monitor: str, mode: str) -> str:
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise UsageError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    return "max" if "acc" in monitor or monitor.endswith("auc") else "min"


def _check_monitor(trainer: Trainer, monitor: str, who: str) -> None:
    if monitor.startswith("val_") and not trainer.has_validation:
        raise UsageError(
            f"{who} monitors {monitor!r} but there is no validation split; give the data a "
            f"validation fraction or monitor {monitor[4:]!r}"
        )


class EarlyStopping(Callback):
    """Ends the current phase when ``monitor`` has not improved for ``patience`` epochs (the next
    phase, if any, then starts). Its counters restart with each phase."""

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        stop_training: bool = False,
    ) -> None:
        if patience < 1:
            raise UsageError(f"early-stopping patience must be at least 1, got {patience}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = abs(float(min_delta))
        self.mode = _mode_for(monitor, mode)
        self.stop_training = stop_training
        self.best: float | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def setup(self, trainer: Trainer) -> None:
        _check_monitor(trainer, self.monitor, "early stopping")

    def on_phase_start(self, trainer: Trainer, phase: Phase) -> None:
        self.best, self.wait = None, 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise UsageError(
                f"early stopping monitors {self.monitor!r}, which is not among the logged "
                f"values {sorted(logs)}; pass one of them"
            )
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.should_stop_phase = True
            if self.stop_training:
                trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.wait = int(state.get("wait", 0))
        self.stopped_epoch = state.get("stopped_epoch")


class ModelCheckpoint(Callback):
    """Saves ``best.weights.h5`` when ``monitor`` improves and, after every epoch, the ``last``
    checkpoint: model and optimizer variables plus the trainer state (epoch, strategy phase,
    callback states, history) in ONE file replaced atomically (``last.ckpt.npz``), so a crash
    leaves either the previous or the new checkpoint, never half of one. ``state.json`` beside it
    is a human-readable copy of the state."""

    LAST = "last.ckpt.npz"
    BEST = "best.weights.h5"

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        monitor: str = "val_loss",
        mode: str = "auto",
        save_best: bool = True,
        save_last: bool = True,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.mode = _mode_for(monitor, mode)
        self.save_best = save_best
        self.save_last = save_last
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / self.LAST

    @property
    def best_path(self) -> Path:
        return self.dirpath / self.BEST

    def setup(self, trainer: Trainer) -> None:
        if self.save_best:
            _check_monitor(trainer, self.monitor, "the best checkpoint")
        from ..outputs import ensure_folder

        if trainer.is_chief:  # only the chief of a multi-worker run writes checkpoints
            ensure_folder(self.dirpath)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if not self.save_best or self.monitor not in logs or not trainer.is_chief:
            return
        value = float(logs[self.monitor])
        better = self.best is None or (
            value < self.best if self.mode == "min" else value > self.best
        )
        if better and math.isfinite(value):
            self.best, self.best_epoch = value, epoch
            from ..outputs import atomic_path

            with atomic_path(self.best_path) as tmp:
                trainer.model.network.save_weights(tmp)

    def on_epoch_complete(self, trainer: Trainer, epoch: int) -> None:
        if self.save_last and trainer.is_chief:
            trainer.save_checkpoint(self.last_path)

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        if self.save_last and self.last_path.exists():
            log.warning(
                f"training stopped ({type(exception).__name__}); the last checkpoint "
                f"is {self.last_path}: resume from it (finetune --resume, or "
                'Trainer.fit(..., ckpt_path="last"))'
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")


class LearningRateMonitor(Callback):
    """Adds the learning rate (``lr``) and the base's multiplier (``base_lr``) to each epoch's
    logs."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        logs["lr"] = trainer.learning_rate
        logs["base_lr"] = trainer.learning_rate * trainer.base_lr_multiplier


class HistoryLogger(Callback):
    """Writes the whole history (one row per epoch, with its phase) as CSV and/or JSON after
    every epoch, atomically."""

    def __init__(
        self,
        csv_path: str | os.PathLike[str] | None = None,
        json_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.csv_path = Path(csv_path) if csv_path else None
        self.json_path = Path(json_path) if json_path else None

    def on_epoch_complete(self, trainer: Trainer, epoch: int) -> None:
        self.write(trainer)

    def on_fit_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        self.write(trainer)

    def write(self, trainer: Trainer) -> None:
        if not trainer.is_chief:
            return
        # epochs numbered from 1 in the files, as on stderr ("epoch 3/10")
        rows = [{**row, "epoch": int(row["epoch"]) + 1} for row in trainer.history]
        if self.csv_path:
            columns: list[str] = []
            for row in rows:
                columns += [k for k in row if k not in columns]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.csv_path, buf.getvalue())
        if self.json_path:
            data = {"history": rows, "phases": trainer.phase_results}
            atomic_write_text(self.json_path, json.dumps(data, indent=2))


def _fmt(logs: dict[str, float]) -> str:
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr") if k in logs]
    return " ".join(f"{k} {logs[k]:.4g}" for k in keys)


class ProgressPrinter(Callback):
    """One line per epoch and per phase on stderr; on a terminal, a line within the epoch too
    (batches done, batches per second, time left), redrawn at most every ``interval`` seconds."""

    def __init__(self, stream: Any = None, interval: float = 0.25) -> None:
        self.stream = stream
        self.interval = interval
        self._started = 0.0
        self._shown = 0.0
        self._drawn = False

    def _out(self) -> Any:
        return self.stream or sys.stderr

    @property
    def wants_batches(self) -> bool:
        """Only a terminal gets the within-epoch line (and the Trainer a call per batch)."""
        return bool(getattr(self._out(), "isatty", lambda: False)())

    def _print(self, text: str) -> None:
        if self._drawn:
            text = "\r\033[K" + text  # replace the within-epoch line
            self._drawn = False
        print(text, file=self._out(), flush=True)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        import time

        self._started = self._shown = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, batch: int, steps: int | None, logs: dict[str, float]
    ) -> None:
        import time

        out = self._out()
        if not getattr(out, "isatty", lambda: False)():
            return
        now = time.perf_counter()
        if now - self._shown < self.interval and (steps is None or batch + 1 < steps):
            return
        self._shown = now
        done = batch + 1
        rate = done / max(now - self._started, 1e-9)
        total = f"/{steps}" if steps else ""
        eta = f", {(steps - done) / rate:.0f}s left" if steps else ""
        loss = f" loss {logs['loss']:.4g}" if "loss" in logs else ""
        out.write(
            f"\r\033[K  epoch {trainer.epoch + 1}/{trainer.planned_epochs}: batch {done}{total}"
            f" ({rate:.1f} batches/s{eta}){loss}"
        )
        out.flush()
        self._drawn = True

    def on_phase_start(self, trainer: Trainer, phase: Phase) -> None:
        self._print(
            f"phase {phase.name}: {phase.epochs} epochs, {phase.optimizer} "
            f"lr {phase.learning_rate:g}, {trainer.model.count_trainable():,} trainable parameters"
        )

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        total = trainer.planned_epochs
        seconds = logs.get("seconds", 0.0)
        self._print(
            f"epoch {epoch + 1}/{total} [{trainer.phase_name}] {_fmt(logs)} ({seconds:.1f}s)"
        )

    def on_phase_end(self, trainer: Trainer, phase: Phase, results: dict[str, Any]) -> None:
        if "test_accuracy" in results:
            self._print(
                f"phase {phase.name} done after {results['epochs']} epochs: test accuracy "
                f"{results['test_accuracy']:.4f} (loss {results['test_loss']:.4f})"
            )
        else:
            self._print(f"phase {phase.name} done after {results['epochs']} epochs")
