"""lr-find: the exponential sweep, its suggestions, the restored model, the command and
``finetune --learning-rate auto`` (tiny real CNN; digits as images, or a small photo folder)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli_faults import invoke_cli
from trainer_helpers import digits, tiny_backbone


def test_valley_and_steepest_on_a_known_curve() -> None:
    from transferkit.trainer.lr_find import steepest, valley

    # flat, then falling (fastest at index 30), then flat, then diverging
    x = np.arange(60)
    falling = 2.0 - 1.5 / (1 + np.exp(-(x - 30) / 3.0))
    losses = np.where(x < 15, 2.0, falling) + np.where(x > 45, (x - 45) ** 2 / 20, 0)
    at = steepest(list(losses))
    assert at is not None and abs(at - 30) <= 1
    v = valley(list(losses))
    assert v is not None and 25 <= v <= 45
    assert valley([3.0, 3.0, 3.0]) is None
    assert steepest([1.0, 0.5]) is None


def test_sweep_suggests_a_rate_and_restores_the_model() -> None:
    from transferkit.trainer import ArrayDataModule, Trainer, TransferModel, seed_everything

    seed_everything(0)
    images, labels, names = digits(160, 4)
    data = ArrayDataModule(images, labels, names, seed=0, batch_size=16, augment="none")
    model = TransferModel(tiny_backbone(), "linear", num_classes=4, label_names=names)
    before = [np.asarray(v.numpy()) for v in model.network.variables]
    flags = [layer.trainable for layer in model.base.layers]
    trainer = Trainer(seed=0, enable_progress=False)
    found = trainer.lr_find(
        model, data, "warmup-unfreeze", min_lr=1e-5, max_lr=1e4, num_training=40
    )
    assert found.phase == "warmup"
    rates = np.asarray(found.learning_rates)
    assert rates[0] == pytest.approx(1e-5)
    np.testing.assert_allclose(rates[1:] / rates[:-1], (1e9) ** (1 / 39), rtol=1e-6)
    assert found.diverged and len(found.losses) < 40  # rates of 100 and more blow the loss up
    assert 1e-5 < found.suggestion < 10.0
    assert min(found.losses) < found.losses[0]
    after = [np.asarray(v.numpy()) for v in model.network.variables]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [layer.trainable for layer in model.base.layers] == flags
    # the same strategy object fits afterwards from its first phase
    result = trainer.fit(model, data, "head-only")
    assert result["epochs"] > 0


def test_the_sweep_begins_at_the_start_state_and_restores_what_was_before_it() -> None:
    from transferkit.trainer import ArrayDataModule, Trainer, TransferModel, seed_everything

    seed_everything(0)
    images, labels, names = digits(64, 4)
    data = ArrayDataModule(images, labels, names, seed=0, batch_size=16, augment="none")
    model = TransferModel(tiny_backbone(), "linear", num_classes=4, label_names=names)
    before = [np.asarray(v.numpy()) for v in model.network.variables]
    started = []

    def start(trainer: Trainer) -> None:  # a head of zeros: every class 1/4, loss ln 4
        started.append(trainer.strategy.phase.name)
        for weight in model.head.layers[-1].weights:
            weight.assign(np.zeros(weight.shape, np.float32))

    found = Trainer(seed=0, enable_progress=False).lr_find(
        model, data, "warmup-unfreeze", min_lr=1e-8, max_lr=1e-7, num_training=3, start=start
    )
    assert started == ["warmup"]
    assert found.losses[0] == pytest.approx(math.log(4), rel=1e-4)
    for a, b in zip(before, [np.asarray(v.numpy()) for v in model.network.variables], strict=True):
        np.testing.assert_array_equal(a, b)


def _folder(tmp_path: Path) -> Path:
    from imagefiles import make_folder

    images = tmp_path / "images"
    make_folder(images, per_class=6)
    return images


SMALL = ["--batch-size", "4", "--input-size", "32", "--split", "0.5", "0.25", "0.25"]


def test_lr_find_command_writes_the_plot_and_the_json(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke_cli("lr-find", str(_folder(tmp_path)), "-b", tiny, "-s", "head-only", *SMALL,
                        "--num-training", "12", "--min-lr", "1e-4", "--max-lr", "10", "-o",
                        str(out), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["suggestion"] == printed["suggestion"] and 1e-4 <= saved["suggestion"] <= 10
    assert len(saved["learning_rates"]) == len(saved["losses"]) <= 12
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "model.keras").exists()


def test_lr_find_sweeps_from_the_probe_head_as_the_run_starts(tiny: str, tmp_path: Path) -> None:
    folder, first = _folder(tmp_path), {}
    for strategy in ("warmup-unfreeze", "head-only"):  # the first starts at the linear probe
        out = tmp_path / strategy
        result = invoke_cli("lr-find", str(folder), "-b", tiny, "-s", strategy, *SMALL,
                            "--num-training", "3", "--min-lr", "1e-7", "--max-lr", "1e-6", "-o",
                            str(out))  # fmt: skip
        assert result.returncode == 0, result.stderr
        first[strategy] = json.loads((out / "lr_find.json").read_text())["losses"][0]
    assert first["warmup-unfreeze"] < 0.9 * first["head-only"], first


def test_finetune_learning_rate_auto_trains_with_the_suggestion(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke_cli("finetune", str(_folder(tmp_path)), "-b", tiny, "-s", "head-only", *SMALL,
                        "--epochs", "1", "--lr", "auto", "-o", str(out), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    suggestion = json.loads((out / "lr_find.json").read_text())["suggestion"]
    history = json.loads((out / "history.json").read_text())["history"]
    assert math.isclose(history[0]["lr"], suggestion, rel_tol=1e-5)
    assert (out / "model.keras").exists()


def test_auto_only_for_the_first_phase(tiny: str, tmp_path: Path) -> None:
    result = invoke_cli("finetune", str(_folder(tmp_path)), "-b", tiny, "--lr", "1e-3",
                        "--lr", "auto", "-o", str(tmp_path / "run"))  # fmt: skip
    assert result.returncode == 2 and "only the first phase" in result.stderr
    assert not (tmp_path / "run").exists()
