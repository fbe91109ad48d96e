"""``transferkit spotcheck``: a grid of feature sets x classifiers, in parallel."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from .options import input_size_option, runtime_options


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
    @click.option(
        "--backbones",
        "-b",
        default=None,
        help="With an image folder: backbones to extract with, comma-separated "
        "(NAME[@SIZE][:POOLING], e.g. efficientnet-lite0,efficientnet-lite0@128).",
    )
    @click.option(
        "--classifiers",
        "-c",
        default="recommended",
        show_default=True,
        help="Classifier names and/or groups (recommended, classic, fast, linear, incremental, "
        "river, all).",
    )
    @click.option(
        "--timeout",
        type=float,
        default=300.0,
        show_default=True,
        help="Seconds one fit may take before it is killed (a 'timeout' row).",
    )
    @click.option("--jobs", "-j", type=int, default=None, help="Worker processes [all cores].")
    @click.option(
        "--scheduler",
        default=None,
        help="Fan the pairs out on a Dask cluster: a scheduler address (tcp://host:8786), "
        "or 'local' for a local Dask cluster of --jobs processes. Default: local processes.",
    )
    @click.option("--test-size", type=float, default=0.2, show_default=True)
    @click.option(
        "--test",
        "test",
        type=click.Path(),
        default=None,
        help="Score on this store (features of a separate test folder, same recipe and classes) "
        "instead of splitting; with --backbones, a test image folder, extracted the same way.",
    )
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option(
        "--out",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder for report.json, report.csv, heatmap.png and report.html.",
    )
    @click.option(
        "--weights",
        default="default",
        show_default=True,
        help="Backbone weights for extraction: default, none, or a file.",
    )
    @click.option(
        "--pooling", default="avg", show_default=True, type=click.Choice(["avg", "max", "flatten"])
    )
    @input_size_option
    @click.option("--batch-size", type=int, default=32, show_default=True)
    @click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Feature cache [$TRANSFERKIT_CACHE or ~/.cache/transferkit].",
    )
    @click.option("--store", default=None, help="Store format, when the suffix does not tell.")
    @runtime_options()
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @config_options
    def spotcheck_command(
        inputs: tuple[str, ...],
        backbones: str | None,
        classifiers: str,
        timeout: float,
        jobs: int | None,
        scheduler: str | None,
        test_size: float,
        test: str | None,
        seed: int,
        out: str | None,
        weights: str,
        pooling: str,
        input_size: str | None,
        batch_size: int,
        cache_dir: str | None,
        store: str | None,
        runtime: str,
        precision: str,
        as_json: bool,
    ) -> None:
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
        from ..cli import echo_json

        report = api.spotcheck(
            list(inputs),
            backbones=backbones,
            classifiers=classifiers,
            timeout=timeout,
            jobs=jobs,
            scheduler=scheduler,
            test_size=test_size,
            test=test,
            seed=seed,
            out=out,
            weights=weights,
            pooling=pooling,
            input_size=input_size,
            batch_size=batch_size,
            cache_dir=cache_dir,
            store=store,
            runtime=runtime,
            precision=precision,
        )
        if as_json:
            echo_json(report)
        else:
            print_spotcheck(report)
