"""Built-in loggers of fine-tune runs: ``csv`` (``history.csv`` and ``history.json``),
``tensorboard`` (Keras' ``TensorBoard`` callback; needs the ``tensorboard`` package) and
``mlflow`` (an MLflow run per fine-tune: parameters, per-epoch metrics, the configuration and the
recipe as artifacts; needs ``transferkit[mlflow]``)."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transferkit import UsageError, hookimpl
from transferkit.plugin import HistoryLogger, Logger, LoggerSpec


def csv_logger(out: Path, location: str | None = None) -> Any:
    folder = Path(location) if location else Path(out)
    return HistoryLogger(folder / "history.csv", folder / "history.json")


def tensorboard_logger(out: Path, location: str | None = None) -> Any:
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError(
            "the tensorboard logger needs the tensorboard package: pip install tensorboard "
            "(or transferkit[tensorboard])"
        )
    import keras

    return keras.callbacks.TensorBoard(log_dir=str(location or Path(out) / "tensorboard"))


def _tracking_uri(out: Path, location: str | None) -> str:
    """A tracking URI as given (``http://...``, ``sqlite:///...``, ``file:...``), or a folder's
    file store (default ``OUT/mlruns``)."""
    if location and ("://" in location or location.startswith("file:")):
        return str(location)
    return Path(location or Path(out) / "mlruns").resolve().as_uri()


class MlflowLogger(Logger):
    """One MLflow run per fine-tune in the experiment ``experiment``, named after the run
    folder: the configuration as parameters, ``config.yaml`` and ``recipe.json`` as artifacts,
    each epoch's logged values as metrics (step: the epoch, from 1). A resumed fine-tune goes on
    in the same run (its id is part of each checkpoint)."""

    def __init__(self, out: Path, location: str | None = None, experiment: str = "transferkit"):
        if importlib.util.find_spec("mlflow") is None:
            raise UsageError(
                "the mlflow logger needs MLflow: pip install 'transferkit[mlflow]' (or mlflow)"
            )
        self.uri = _tracking_uri(Path(out), location)
        self.experiment = experiment
        self.run_name = Path(out).resolve().name
        self.run_id: str | None = None
        self.resumed = False
        self._config: tuple[Mapping[str, Any], Sequence[Path]] | None = None
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            if self.uri.startswith("file:"):
                # MLflow keeps its file store in maintenance mode and asks for this opt-in; a
                # folder is what a local run without a tracking server has
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _start(self) -> str:
        if self.run_id is None:
            client = self.client()
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = (
                found.experiment_id if found else client.create_experiment(self.experiment)
            )
            self.run_id = client.create_run(experiment_id, run_name=self.run_name).info.run_id
        return self.run_id

    def log_config(
        self, config: Mapping[str, Any], recipe: Mapping[str, Any], files: Sequence[Path]
    ) -> None:
        params = {**dict(config), **{f"recipe.{k}": v for k, v in dict(recipe).items()}}
        self._config = (params, files)  # logged when the fit starts (after a resume's restore)

    def on_fit_start(self, trainer: Any) -> None:
        from mlflow.entities import Param

        run_id = self._start()
        if self._config is None:
            return
        params, files = self._config
        if not self.resumed:  # MLflow's parameters are written once per run
            self.client().log_batch(
                run_id, params=[Param(str(k), str(v)[:6000]) for k, v in params.items()]
            )
        for path in files:
            self.client().log_artifact(run_id, str(path))

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(str(k), float(v), now, epoch + 1)
            for k, v in logs.items()
            if isinstance(v, int | float)
        ]
        self.client().log_batch(self._start(), metrics=metrics)

    def on_fit_end(self, trainer: Any, result: dict[str, Any]) -> None:
        if self.run_id is not None:
            self.client().set_terminated(self.run_id, "FINISHED")

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        if self.run_id is not None:
            status = "KILLED" if isinstance(exception, KeyboardInterrupt) else "FAILED"
            self.client().set_terminated(self.run_id, status)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "uri": self.uri}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("run_id") and state.get("uri") == self.uri:
            self.run_id, self.resumed = str(state["run_id"]), True


@hookimpl
def register_loggers(register: Any) -> None:
    register(
        LoggerSpec(
            name="csv",
            description="history.csv and history.json: one row per epoch, with its phase",
            factory=csv_logger,
        )
    )
    register(
        LoggerSpec(
            name="tensorboard",
            description="TensorBoard logs (OUT/tensorboard; `tensorboard --logdir`)",
            factory=tensorboard_logger,
        )
    )
    register(
        LoggerSpec(
            name="mlflow",
            description="an MLflow run: parameters, per-epoch metrics, config and recipe "
            "(OUT/mlruns, or --logger-dir URI; transferkit[mlflow])",
            factory=MlflowLogger,
        )
    )
