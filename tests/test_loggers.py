"""Loggers of fine-tune runs as plugins (``register_loggers``): several at once, the run's
configuration and recipe saved beside it, and MLflow's own client reading the run back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_faults import invoke_cli

from transferkit import hookimpl


class Memory:
    """A plugin registering the logger ``memory``, which keeps what it hears."""

    def __init__(self) -> None:
        self.made: list[Any] = []

    @hookimpl
    def register_loggers(self, register: Any) -> None:
        from transferkit.plugin import Logger, LoggerSpec

        plugin = self

        class MemoryLogger(Logger):
            def __init__(self, out: Path, location: str | None) -> None:
                self.out, self.location = out, location
                self.config: Any = None
                self.epochs: list[tuple[int, dict[str, float]]] = []
                plugin.made.append(self)

            def log_config(self, config: Any, recipe: Any, files: Any) -> None:
                self.config = (dict(config), dict(recipe), [Path(f) for f in files])

            def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
                self.epochs.append((epoch, dict(logs)))

        register(LoggerSpec(name="memory", description="keeps it", factory=MemoryLogger))


def _images(tmp_path: Path) -> Path:
    from imagefiles import make_folder

    make_folder(tmp_path / "images", per_class=4)
    return tmp_path / "images"


RUN = ["-s", "head-only", "--epochs", "2", "--batch-size", "4", "--split", "0.5", "0.25", "0.25"]


def test_several_loggers_see_the_run_and_mlflow_reads_it_back(
    tiny: str, tmp_path: Path, register_plugin: Any
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    memory = register_plugin(Memory(), "memory-logger")
    out = tmp_path / "run"
    result = invoke_cli("finetune", str(_images(tmp_path)), "-b", tiny, *RUN, "-o", str(out),
                        "--logger", "memory", "--logger", "mlflow", "--logger", "csv",
                        "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # the effective configuration, as --print-config prints it, and the recipe, beside the run
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["backbone"] == tiny and config["batch-size"] == 4
    assert config["logger"] == ["memory", "mlflow", "csv"]
    printed = invoke_cli("finetune", str(_images(tmp_path)), "-b", tiny, "-o", str(out),
                         "--config", str(out / "config.yaml"), "--print-config")  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    again = yaml.safe_load(printed.stdout)
    assert {k: str(again[k]) for k in config if k != "images"} == {
        k: str(v) for k, v in config.items() if k != "images"
    }
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["backbone"] == tiny
    # the plugin's logger: the configuration before the fit, then every epoch
    (logger,) = memory.made
    assert logger.config[0] == config and logger.config[1] == recipe
    assert [e for e, _ in logger.epochs] == [0, 1] and "loss" in logger.epochs[0][1]
    assert (out / "history.csv").exists()  # csv: today's history files
    # MLflow's own client reads the per-epoch metrics back from the local store
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("transferkit").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2]
    assert [m.value for m in losses] == pytest.approx([e[1]["loss"] for e in logger.epochs])
    assert run.data.params["batch-size"] == "4" and run.data.params["recipe.backbone"] == tiny
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "recipe.json"} <= artifacts


def test_loggers_are_listed_and_an_unknown_one_is_refused(tiny: str, tmp_path: Path) -> None:
    listing = invoke_cli("loggers", "--json")
    assert {"csv", "tensorboard", "mlflow"} <= {row["name"] for row in json.loads(listing.stdout)}
    out = tmp_path / "run"
    result = invoke_cli("finetune", str(_images(tmp_path)), "-b", tiny, "-o", str(out),
                        "--logger", "mlfow")  # fmt: skip
    assert result.returncode == 2 and "unknown logger 'mlfow'" in result.stderr
    assert "mlflow" in result.stderr


def test_a_resumed_fine_tune_goes_on_in_the_same_mlflow_run(tiny: str, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    images, out = _images(tmp_path), tmp_path / "run"
    for extra in (["--max-epochs", "1"], ["--resume"]):
        result = invoke_cli("finetune", str(images), "-b", tiny, *RUN, "-o", str(out),
                            "--logger", "mlflow", *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("transferkit").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert run.info.status == "FINISHED"
