"""Training under ``tf.distribute``: two replicas on logical CPU devices against one device,
resume under ``mirrored`` around the unfreeze epoch, and two ``multi-worker`` processes on
localhost. Each case runs in a process of its own (``tests/distribute_child.py``): the CPU must
be split before TensorFlow sets its devices up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_faults import QUIET_ENV, invoke_cli

HERE = Path(__file__).resolve().parent


def _child(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {**os.environ, **QUIET_ENV, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join([str(HERE), full.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, str(HERE / "distribute_child.py"), *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str], timeout: float = 240) -> Any:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.process
@pytest.mark.slow
def test_two_replicas_give_the_weights_of_one_device() -> None:
    """Same global batch (8: 4 per replica), same steps, through the warm-up and the unfrozen
    phase: the weights agree within float rounding."""
    got = _result(_child("equivalence"))
    assert got["replicas"] == 2
    assert got["phases"] == ["warmup", "finetune"]
    assert got["moved"] > 1e-2  # training changed the weights
    assert got["difference"] < 1e-5


@pytest.mark.process
@pytest.mark.slow
def test_resume_under_mirrored_around_the_unfreeze_epoch(tmp_path: Path) -> None:
    """A run failing after epoch 1 (mid warm-up), 2 (the warm-up's last) or 3 (mid fine-tune),
    resumed, ends with the uninterrupted run's weights: the unfrozen phase stays unfrozen."""
    got = _result(_child("resume", str(tmp_path)))
    for after in ("0", "1", "2"):
        assert got[after]["replicas"] == 2
        assert got[after]["phases"] == ["warmup", "warmup", "finetune", "finetune"]
        assert got[after]["difference"] < 1e-6, (after, got[after])


@pytest.mark.process
@pytest.mark.slow
def test_two_workers_on_localhost_write_one_model(tmp_path: Path) -> None:
    from imagefiles import make_folder

    from transferkit.trainer.distribute import free_port, tf_configs

    images = tmp_path / "images"
    make_folder(images, per_class=4)
    out = tmp_path / "run"
    configs = tf_configs([f"localhost:{free_port()}", f"localhost:{free_port()}"])
    procs = [_child("worker", config, str(images), str(out)) for config in configs]
    chief, other = (_result(p, timeout=300) for p in procs)
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["chief"] is not False and other["chief"] is False
    assert other["model_path"] is None
    assert Path(chief["model_path"]) == out / "model.keras"
    assert sorted(p.name for p in out.glob("*.keras")) == ["model.keras"]
    assert (out / "checkpoints" / "last.ckpt.npz").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["distribute"] == "multi-worker"


def test_multi_worker_without_a_cluster_is_refused(tiny: str, tmp_path: Path) -> None:
    from imagefiles import make_folder

    images = tmp_path / "images"
    make_folder(images, per_class=2)
    env = {"TF_CONFIG": ""}
    result = invoke_cli("finetune", str(images), "-b", tiny, "-o", str(tmp_path / "run"),
                        "--distribute", "multi-worker", env=env)  # fmt: skip
    assert result.returncode == 2
    assert "TF_CONFIG" in result.stderr and "--scheduler" in result.stderr
    assert not (tmp_path / "run").exists()
    bad = invoke_cli("finetune", str(images), "-b", tiny, "-o", str(tmp_path / "run"),
                     "--devices", "two")  # fmt: skip
    assert bad.returncode == 2 and "--devices must be auto or a whole number" in bad.stderr


@pytest.mark.process
@pytest.mark.slow
def test_two_dask_workers_each_run_a_replica(tmp_path: Path) -> None:
    """``--scheduler local``: a local Dask cluster of two workers, a TF_CONFIG each, one model."""
    from cli_faults import plugin_env, run_cli, write_entry_points
    from imagefiles import make_folder

    images = tmp_path / "images"
    make_folder(images, per_class=4)
    site = write_entry_points(tmp_path / "site", {"tiny": "tiny_backbone"})
    out = tmp_path / "run"
    result = run_cli("finetune", images, "-b", "tiny-cnn", "-s", "head-only", "--epochs", "1",
                     "--batch-size", "4", "--split", "0.5", "0.25", "0.25", "--no-progress",
                     "--distribute", "multi-worker", "--scheduler", "local", "-o", out, "--json",
                     env=plugin_env(site, "tiny"), timeout=400)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["replicas"] == 2 and len(summary["workers"]) == 2
    assert sorted(p.name for p in out.glob("*.keras")) == ["model.keras"]
    assert json.loads((out / "summary.json").read_text())["distribute"] == "multi-worker"


def test_devices_chosen_too_late_and_a_model_built_outside_are_refused() -> None:
    import tensorflow as tf
    from trainer_helpers import digits, tiny_backbone

    from transferkit import UsageError
    from transferkit.trainer import ArrayDataModule, Trainer, TransferModel, resolve_strategy

    one_epoch = resolve_strategy("head-only", epochs=1)
    have = len(tf.config.list_logical_devices("CPU"))  # TensorFlow has set its devices up
    late = Trainer(devices=have + 1, strategy="mirrored", enable_progress=False)
    with pytest.raises(UsageError, match="before the CPU could be split"), late.scope():
        pass
    trainer = Trainer(devices=have, strategy="mirrored", enable_progress=False)
    images, labels, names = digits(40, 4)
    data = ArrayDataModule(images, labels, names, augment="none", batch_size=8)
    outside = TransferModel(tiny_backbone(), "linear", num_classes=4)
    with pytest.raises(UsageError, match="inside `with trainer.scope"):
        trainer.fit(outside, data, one_epoch)
    with trainer.scope():
        inside = TransferModel(tiny_backbone(), "linear", num_classes=4)
    assert trainer.fit(inside, data, one_epoch)["replicas"] == have
