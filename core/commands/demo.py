"""``transferkit demo``: the whole flow on scikit-learn's digits, offline."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import DemoOptions
from .options import from_fields


def register(cli: click.Group) -> None:
    @cli.command("demo")
    @click.option(
        "--out",
        type=click.Path(file_okay=False),
        default="transferkit-demo",
        show_default=True,
        help="Folder for the images, cached features, report and model.",
    )
    @from_fields(DemoOptions)
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @config_options
    def demo_command(out: str, as_json: bool, **values: Any) -> None:
        """Run the whole flow offline on the handwritten digits that ship with scikit-learn.

        Writes the 1,797 digits as PNG images, extracts features with efficientnet-lite0
        (average and max pooling), spot-checks the fast classifiers, trains the best pair,
        predicts images kept apart, and shows where the report and heat map are.

        \b
        Example:
          transferkit demo --out transferkit-demo
        """
        from .. import api
        from ..cli import echo_json, print_table
        from .spotcheck import print_spotcheck

        result = api.demo(out, options=DemoOptions.of(values=values))
        if as_json:
            echo_json(result)
            return
        click.echo("")
        print_spotcheck({**result["spotcheck"], "rows": result["rows"]})
        train = result["train"]
        click.echo(
            f"\nTrained {train['classifier']}: held-out accuracy {train['accuracy']:.4f}; "
            f"model saved to {result['model_path']}"
        )
        click.echo("\nPredictions for the images kept apart:")
        print_table(
            [
                {
                    "image": p["path"],
                    "true": p["true"],
                    "predicted": p.get("label", "-"),
                    "probability": f"{p['probability']:.3f}" if p.get("probability") else "",
                }
                for p in result["predictions"]
            ],
            ["image", "true", "predicted", "probability"],
        )
        click.echo(
            f"{result['new_images_correct']} of {len(result['predictions'])} correct. "
            f"Done in {result['seconds']:.0f}s."
        )
        click.echo(f"\nOpen the report: {result['report_html']}")
        click.echo(f"Heat map: {result['heatmap']}")
        click.echo(f"Try: transferkit predict {result['model_path']} {result['out']}/new")
