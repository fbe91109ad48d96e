"""``transferkit train``: fit one classifier on a feature store."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from .options import model_out_options


def print_train_result(result: dict[str, Any]) -> None:
    click.echo(result["report_text"].rstrip())
    click.echo("")
    click.echo(
        f"{result['classifier']}: accuracy {result['accuracy']:.4f}, macro F1 "
        f"{result['macro_f1']:.4f}, fit {result['fit_seconds']:.2f}s "
        f"({result['n_train']} train / {result['n_test']} test rows)"
    )
    if result.get("model_path"):
        click.echo(f"model saved to {result['model_path']}")


def register(cli: click.Group) -> None:
    @cli.command("train")
    @click.argument("store_path", metavar="STORE", type=click.Path())
    @click.option("--classifier", "-c", required=True, help="Classifier name (see `classifiers`).")
    @click.option(
        "--test-size", type=float, default=0.2, show_default=True, help="Held-out fraction."
    )
    @click.option(
        "--test",
        "test",
        type=click.Path(),
        default=None,
        help="Score on this store (features of a separate test folder, same recipe and "
        "classes) instead of splitting; every row of STORE then trains.",
    )
    @click.option("--subset", type=float, default=None, help="Use only this fraction of the store.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of split and model.")
    @click.option(
        "--out",
        type=click.Path(dir_okay=False),
        default=None,
        help="Save the fitted model here (.skops for scikit-learn, .pkl for river).",
    )
    @model_out_options("--param C=0.1")
    @click.option("--store", default=None, help="Store format, when the suffix does not tell.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @config_options
    def train_command(
        store_path: str,
        classifier: str,
        test_size: float,
        test: str | None,
        subset: float | None,
        seed: int,
        out: str | None,
        overwrite: bool,
        params: tuple[str, ...],
        store: str | None,
        as_json: bool,
    ) -> None:
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
            store_path,
            classifier=classifier,
            test_size=test_size,
            test=test,
            subset=subset,
            seed=seed,
            out=out,
            overwrite=overwrite,
            store=store,
            params=list(params),
        )
        if as_json:
            echo_json({k: v for k, v in result.items() if k != "report_text"})
        else:
            print_train_result(result)
