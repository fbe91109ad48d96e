"""``transferkit train``: fit one classifier on a feature store."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import TrainOptions
from .options import from_fields


def print_train_result(result: dict[str, Any]) -> None:
    click.echo(result["report_text"].rstrip())
    click.echo("")
    click.echo(
        f"{result['classifier']}: accuracy {result['accuracy']:.4f}, macro F1 "
        f"{result['macro_f1']:.4f}, fit {result['fit_seconds']:.2f}s "
        f"({result['n_train']} train / {result['n_test']} test rows)"
    )
    if result.get("ece") is not None:
        before = result.get("ece_before")
        click.echo(
            f"expected calibration error {result['ece']:.4f}"
            + (
                f" ({result['calibration']} {result.get('calibration_status', 'kept')}; before "
                f"{before:.4f})"
                if before is not None
                else ""
            )
        )
    if result.get("model_path"):
        click.echo(f"model saved to {result['model_path']}")


def register(cli: click.Group) -> None:
    @cli.command("train")
    @click.argument("store_path", metavar="STORE", type=click.Path())
    @click.option("--classifier", "-c", required=True, help="Classifier name (see `classifiers`).")
    @from_fields(TrainOptions)
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @config_options
    def train_command(store_path: str, classifier: str, as_json: bool, **values: Any) -> None:
        """Train a classifier on a feature store and print the per-class report.

        The rows are split stratified and seeded (80/20 by default), or all train and --test
        names a separate test store; the report names the
        store's classes and ends with accuracy and fit time. --out saves the model with the
        recipe of its features, ready for `transferkit predict`.

        \b
        Example:
          transferkit train features.h5 --classifier logistic-regression --out model.skops
          transferkit train features.h5 -c logistic-regression --param C=0.1
        """
        from .. import api
        from ..cli import echo_json

        result = api.train(
            store_path, classifier=classifier, options=TrainOptions.of(values=values)
        )
        if as_json:
            echo_json({k: v for k, v in result.items() if k != "report_text"})
        else:
            print_train_result(result)
