"""``transferkit stream``: incremental learning on a store, batch by batch."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import StreamOptions
from .options import from_fields


def register(cli: click.Group) -> None:
    @cli.command("stream")
    @click.argument("store_path", metavar="STORE", type=click.Path())
    @click.option(
        "--classifier",
        "-c",
        default="softmax",
        show_default=True,
        help="An incremental classifier (`transferkit classifiers` lists incremental=True); "
        "softmax: multinomial logistic regression, averaged SGD on running-standardised features.",
    )
    @from_fields(StreamOptions)
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @config_options
    def stream_command(store_path: str, classifier: str, as_json: bool, **values: Any) -> None:
        """Learn incrementally from a feature store, reading it batch by batch.

        Each batch is predicted before it is learnt (progressive validation); the running
        accuracy is printed every --report-every samples, then the accuracy on the held-out
        rows. Memory stays bounded by the batch size, whatever the store's size.

        \b
        Example:
          transferkit stream big.zarr --classifier river-logreg --batch-size 512 --out m.pkl
        """
        from .. import api
        from ..cli import echo_json

        result = api.stream(
            store_path, classifier=classifier, options=StreamOptions.of(values=values)
        )
        if as_json:
            echo_json({k: v for k, v in result.items() if k != "report_text"})
            return
        for point in result["progressive"]:
            click.echo(
                f"{point['samples']:>9} samples  progressive accuracy {point['accuracy']:.4f}"
            )
        click.echo("")
        click.echo(result["report_text"].rstrip())
        click.echo("")
        held_out = result["accuracy"]
        click.echo(
            f"{classifier}: {result['n_train']} rows"
            + (f" x {result['passes']} passes" if result["passes"] > 1 else "")
            + " learnt at "
            f"{result['samples_per_second']:.0f} samples/s; progressive accuracy "
            f"{result['progressive_accuracy']:.4f}"
            + (f", held-out accuracy {held_out:.4f}" if held_out is not None else "")
        )
        if result.get("model_path"):
            click.echo(f"model saved to {result['model_path']}")
