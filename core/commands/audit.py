"""``transferkit audit``: label issues, duplicates, leakage and outliers of a store."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import AuditOptions
from .options import from_fields


def print_audit(report: dict[str, Any]) -> None:
    from ..cli import print_table

    summary = report["summary"]
    for section, columns in (
        ("label_issues", ["path", "given", "suggested", "score"]),
        ("near_duplicates", ["store", "path", "other_path", "similarity", "exact"]),
        ("leakage", ["test_path", "train_path", "similarity", "exact"]),
        ("outliers", ["path", "given", "score"]),
    ):
        found = report[section]
        click.echo(f"{section.replace('_', ' ')}: {len(found)}")
        if found:
            shown = [
                {c: f"{f[c]:.3f}" if isinstance(f[c], float) else str(f[c]) for c in columns}
                for f in found[:10]
            ]
            print_table(shown, columns)
            if len(found) > 10:
                click.echo(f"... and {len(found) - 10} more")
        click.echo("")
    click.echo(
        f"{summary['rows']} rows, out-of-fold accuracy {summary['out_of_fold_accuracy']:.4f} "
        f"({summary['classifier']}), {summary['seconds']['total']:.1f}s"
    )
    if report.get("files"):
        click.echo(f"Report: {report['files']['html']} (also audit.json, audit.csv)")


def register(cli: click.Group) -> None:
    @cli.command("audit")
    @click.argument("store_path", metavar="STORE", type=click.Path())
    @from_fields(AuditOptions)
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @config_options
    def audit_command(store_path: str, as_json: bool, **values: Any) -> None:
        """Find probable label errors, near-duplicates, test images leaked from training and
        outliers in a feature store (or an image folder, with --backbone).

        Label issues come from out-of-fold probabilities and the confident-learning rule;
        duplicates, leakage and outliers from the cosine similarity of the features, in one
        blocked pass, and exact duplicates from the files' bytes. Each list is ranked worst
        first; --out writes audit.json, audit.csv and a page with thumbnails, audit.html.

        \b
        Example:
          transferkit audit train.h5 --test test.h5 --out audit/
          transferkit audit photos/ --backbone efficientnet-lite0 --json
        """
        from .. import api
        from ..cli import emit

        report = api.audit(store_path, options=AuditOptions.of(values=values))
        emit(report, as_json, print_audit)
