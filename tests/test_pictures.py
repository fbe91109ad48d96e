"""Pictures: a fine-tune run's ``curves.png`` and its progress within an epoch, epochs numbered
alike in ``history.csv`` and on stderr; on real image files and a real Keras model."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from transferkit import BackboneSpec, hookimpl


class TinyBackbones:
    @hookimpl
    def register_backbones(self, register: Any) -> None:
        from trainer_helpers import tiny_backbone

        def factory(weights: Any = "default", input_size: Any = None, pooling: str = "avg") -> Any:
            import keras

            keras.utils.set_random_seed(0)  # the same random network at extract and predict
            return tiny_backbone(tuple(input_size or (16, 16)), pooling="map")

        register(BackboneSpec(name="tiny-pics", description="test CNN", factory=factory,
                              input_size=(16, 16)))  # fmt: skip


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 90, (16, 16, 3)) + 80 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_finetune_draws_curves_and_shows_progress_within_epochs(
    tmp_path: Path, register_plugin: Any, capsys: Any
) -> None:
    import transferkit
    from transferkit.trainer import ProgressPrinter

    register_plugin(TinyBackbones(), "tiny-pics")
    terminal = Terminal()
    out = tmp_path / "run"
    result = transferkit.finetune(
        image_folder(tmp_path / "images"), backbone="tiny-pics", out=out, head="linear",
        strategy="warmup-unfreeze", epochs=[2, 2], learning_rate=[1e-2, 1e-3], batch_size=4,
        augment="none", callbacks=[ProgressPrinter(stream=terminal, interval=0.0)],
    )  # fmt: skip
    # curves.png: a real picture with two panels of lines, not a blank canvas
    assert result["curves"] == str(out / "curves.png")
    with Image.open(out / "curves.png") as picture:
        assert picture.format == "PNG" and picture.size == (1000, 380)
        pixels = np.asarray(picture.convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01
    # epochs numbered from 1 in history.csv, as on stderr
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "finetune", "finetune"]
    history = json.loads((out / "history.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    shown = terminal.getvalue()
    for epoch in range(1, 5):
        assert f"epoch {epoch}/4 [" in shown
    # within an epoch: batches done of the epoch's, the rate and the time left
    assert "epoch 1/4: batch 1/" in shown and "batches/s" in shown and "s left" in shown
    steps = int(shown.split("epoch 1/4: batch 1/")[1].split(" ")[0])
    assert f"batch {steps}/{steps}" in shown
    # off a terminal (a pipe, a log file) there are no redrawn lines
    assert "batch 1/" not in capsys.readouterr().err


def test_predict_on_a_labelled_folder_shows_the_truth_and_draws_the_confusion_matrix(
    tmp_path: Path, register_plugin: Any
) -> None:
    from click.testing import CliRunner

    import transferkit
    from transferkit.cli import build_cli

    register_plugin(TinyBackbones(), "tiny-pics")
    images = image_folder(tmp_path / "images")
    store = tmp_path / "f.h5"
    transferkit.extract(images, backbone="tiny-pics", out=store, weights="none", progress=False)
    transferkit.train(store, classifier="ridge-1", out=tmp_path / "m.skops")
    picture = tmp_path / "pics" / "confusion.png"
    result = CliRunner().invoke(
        build_cli(), ["predict", str(tmp_path / "m.skops"), str(images), "--out", str(picture)]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "TRUE", "CLASS", "PROBABILITY", "OOD", "UNFAMILIAR"]
    table = [line.split() for line in lines[1:31]]
    assert {row[1] for row in table} == {"cat", "dog", "owl"}
    correct = sum(row[1] == row[2] for row in table)
    assert f"accuracy {correct / 30:.4f} on 30 labelled images" in result.stdout
    with Image.open(picture) as drawn:
        assert drawn.format == "PNG" and min(drawn.size) > 300
    as_json = json.loads(
        CliRunner()
        .invoke(build_cli(), ["predict", str(tmp_path / "m.skops"), str(images), "--json"])
        .stdout
    )
    assert as_json["accuracy"] == correct / 30 and as_json["labelled"] == 30
    # loose files are not a labelled folder: no TRUE column, and --out says what it needs
    loose = CliRunner().invoke(
        build_cli(), ["predict", str(tmp_path / "m.skops"), str(images / "cat" / "0.png")]
    )
    assert loose.exit_code == 0 and "TRUE" not in loose.stdout
    refused = CliRunner().invoke(
        build_cli(),
        ["predict", str(tmp_path / "m.skops"), str(images / "cat"), "--out", str(picture)],
    )
    assert refused.exit_code == 2 and "labelled images" in refused.stderr
