"""``transferkit finetune``: fine-tune a backbone with a head on a folder of images."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import FinetuneOptions
from .options import from_fields, require


def print_finetune_summary(result: dict[str, Any]) -> None:
    data = result["data"]
    click.echo(
        f"Fine-tuned {result['backbone']} with the {result['head']} head "
        f"({result['strategy']}) on {data['train']} training images, {data['classes']} classes, "
        f"{result['epochs']} epochs in {result['seconds']:.1f} s."
    )
    for phase in result["phases"]:
        line = f"  phase {phase['phase']}: {phase['epochs']} epochs"
        if phase.get("early_stopped"):
            line += " (stopped early)"
        if "test_accuracy" in phase:
            line += f", test accuracy {phase['test_accuracy']:.4f}"
        click.echo(line)
    if result.get("fast_dev_run"):
        click.echo("Fast dev run: no checkpoint and no model were written.")
    elif result.get("model_path") is None:
        click.echo("This worker trained a replica; the chief writes the model.")
    else:
        click.echo(f"Saved {result['model_path']} (use it with `transferkit predict`).")
    if result.get("curves"):
        click.echo(f"Curves: {result['curves']}")


def register(cli: click.Group) -> None:
    @cli.command("finetune")
    @click.argument("images", type=click.Path(exists=True))
    @click.option(
        "--backbone", "-b", default=None, help="Backbone name (see `backbones`); required here "
        "or in --config."
    )  # fmt: skip
    @from_fields(FinetuneOptions, only=("strategy",))
    @click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder.")
    @from_fields(FinetuneOptions, skip=("strategy",))
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @config_options
    def finetune_command(
        images: str, backbone: str | None, out: str, as_json: bool, **values: Any
    ) -> None:
        """Fine-tune a backbone with a classification head on a folder of images.

        IMAGES is a folder with one sub-folder per class or a CSV/JSON list of path,label. The
        images are split (stratified, seeded) into train/validation/test; the strategy decides
        what trains in each phase, and the test accuracy is printed after each phase. OUT gets
        model.keras (for `transferkit predict`), checkpoints/ (an interrupted run continues with
        --resume), history.csv/json, summary.json and curves.png (loss and accuracy per epoch).

        \b
        Example:
          transferkit finetune photos/ -o run/ --config examples/finetune-vgg16-classic.yaml
          transferkit finetune photos/ -b efficientnet-lite0 -s head-only --epochs 5 -o run/
        """
        from .. import api
        from ..cli import emit

        require(backbone=backbone)
        result = api.finetune(
            images, backbone=backbone, out=out, options=FinetuneOptions.of(values=values)
        )
        emit(result, as_json, print_finetune_summary)
