"""``transferkit export``: a trained model as one deployable graph."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import ExportOptions
from .options import from_fields


def register(cli: click.Group) -> None:
    @cli.command("export")
    @click.argument("model_path", metavar="MODEL", type=click.Path())
    @from_fields(ExportOptions)
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @config_options
    def export_command(model_path: str, as_json: bool, **values: Any) -> None:
        """Export MODEL (a fine-tuned .keras, or a .skops from train or stream with a linear
        head) as one graph: RGB images, float32 0..255, at the model's input size -> class
        probabilities. The class names and the recipe go with it.

        \b
        Example:
          transferkit export model.skops --format onnx --out model.onnx
          transferkit export run/model.keras --format openvino --out model-ir
        """
        from .. import api
        from ..cli import emit

        result = api.export(model_path, options=ExportOptions.of(values=values))

        def show(r: dict[str, Any]) -> None:
            h, w = r["input_size"]
            click.echo(
                f"Exported {model_path} as {r['format']} to {r['path']}: images {h}x{w} RGB "
                f"0..255 -> probabilities of {len(r['label_names'])} classes ({r['probabilities']})"
            )

        emit(result, as_json, show)
