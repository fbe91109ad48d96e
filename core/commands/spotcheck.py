"""``transferkit spotcheck``: a grid of feature sets x classifiers, in parallel."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import SpotcheckOptions
from .options import from_fields


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def print_spotcheck(report: dict[str, Any]) -> None:
    from ..cli import print_table

    rows = sorted(
        report["rows"],
        key=lambda r: (r["status"] != "ok", -(r["accuracy"] or 0.0)),
    )
    columns = ["backbone", "classifier", "status", "accuracy", "macro_f1", "fit_seconds", "error"]
    print_table([{c: _fmt(r.get(c)) for c in columns} for r in rows], columns)
    counts = report["counts"]
    click.echo(
        f"\n{len(report['rows'])} pairs: {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['timeout']} timed out, in {report['seconds']:.1f}s"
    )
    if report["best_model"]:
        click.echo(
            f"Best: {report['best_model']} on {report['best_features']} features, accuracy "
            f"{report['best_accuracy']:.4f}"
        )
    else:
        click.echo("No pair succeeded; see the errors above.")
    files = report.get("files")
    if files:
        click.echo(f"Report: {files['html']} (also {files['json']}, {files['csv']})")
        click.echo(f"Heat map: {files['heatmap']}")


def register(cli: click.Group) -> None:
    @cli.command("spotcheck")
    @click.argument("inputs", nargs=-1, required=True, type=click.Path())
    @from_fields(SpotcheckOptions)
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @config_options
    def spotcheck_command(inputs: tuple[str, ...], as_json: bool, **values: Any) -> None:
        """Spot-check classifiers on feature stores, or on an image folder with backbones.

        Every (features x classifier) pair is fitted in a worker process and scored on a
        stratified held-out split: accuracy, macro F1, balanced accuracy, fit and predict
        seconds. A failing model is a 'failed' row and one that runs past --timeout a
        'timeout' row; the grid always finishes. Image features are extracted once per
        backbone and cached.

        \b
        Example:
          transferkit spotcheck lite0.h5 resnet.h5 --classifiers classic --out report/
          transferkit spotcheck photos/ -b efficientnet-lite0,efficientnet-lite0@128 -c fast
          transferkit spotcheck lite0.h5 -c classic --scheduler tcp://10.0.0.5:8786
        """
        from .. import api
        from ..cli import emit

        report = api.spotcheck(list(inputs), options=SpotcheckOptions.of(values=values))
        emit(report, as_json, print_spotcheck)
