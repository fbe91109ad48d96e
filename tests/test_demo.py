"""The README's first command: ``transferkit demo`` on the digits, offline, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from transferkit.cli import build_cli


@pytest.mark.slow
def test_demo_runs_the_whole_flow(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        build_cli(),
        ["demo", "--out", str(out), "--backbones", "efficientnet-lite0@64", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["images"]["count"] == 1777 and len(data["images"]["new"]) == 20
    assert len(list((out / "images").rglob("*.png"))) == 1777
    assert data["spotcheck"]["best_accuracy"] > 0.85  # pretrained features of real digits
    assert data["spotcheck"]["counts"]["ok"] == 8  # the fast group
    assert data["train"]["accuracy"] == pytest.approx(data["spotcheck"]["best_accuracy"])
    assert data["new_images_correct"] >= 15
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["best_model"] == data["spotcheck"]["best_model"]
    assert (out / "report" / "heatmap.png").stat().st_size > 1000
    assert Path(data["model_path"]).exists()
    # a second run reuses the images and the cached features (one classifier is enough here)
    again = CliRunner().invoke(
        build_cli(),
        [
            "demo",
            "--out",
            str(out),
            "--backbones",
            "efficientnet-lite0@64",
            "-c",
            "logistic-regression",
        ],
    )
    assert again.exit_code == 0, again.output
    assert "reused from cache" in again.stderr and "Open the report" in again.stdout
