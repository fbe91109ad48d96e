"""The spot-check's report files: CSV, heat maps, the best pair's confusion matrix, HTML page.

:func:`write_report` writes ``report.json``, ``report.csv``, ``heatmap.png`` (features x
classifiers; with many classifiers also ``heatmap-top.png`` of the best ones), ``confusion.png``
and ``report.html`` (a sortable table with the pictures embedded), each whole (a temporary file
renamed into place), into a folder marked as a spot-check report (:func:`check_report_folder`
refuses any other non-empty folder, and an input).
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import outputs
from .spotcheck_runner import ROW_FIELDS

REPORT_KIND = "spotcheck-report"  # the kind in a report folder's marker file


def check_report_folder(out: Path, inputs: list[str]) -> None:
    """A report folder may be new, empty or an earlier report (its marker), and never an input."""
    outputs.check_outside_inputs(out, inputs, "report folder")
    outputs.check_folder(out, REPORT_KIND, what="report folder")
    outputs.check_writable(out)


def write_report(report: dict[str, Any], out: Path) -> dict[str, str]:
    """report.json, report.csv, heatmap.png and report.html under ``out``, each written whole
    (a temporary file renamed into place) into a folder marked as a transferkit report."""
    outputs.check_folder(out, REPORT_KIND, what="report folder")
    outputs.mark_folder(out, REPORT_KIND)
    files = {
        "json": out / "report.json",
        "csv": out / "report.csv",
        "heatmap": out / "heatmap.png",
        "html": out / "report.html",
    }
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(ROW_FIELDS))
    writer.writeheader()
    for row in report["rows"]:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in ROW_FIELDS})
    outputs.atomic_write_text(files["csv"], table.getvalue())
    labels = _row_labels(report)
    with outputs.atomic_path(files["heatmap"]) as tmp:
        heatmap(report["rows"], tmp, labels=labels)
    pictures = {"heatmap": files["heatmap"]}
    classifiers = list(dict.fromkeys(r["classifier"] for r in report["rows"]))
    if len(classifiers) > COMPACT_TOP:
        files["heatmap_top"] = out / "heatmap-top.png"
        with outputs.atomic_path(files["heatmap_top"]) as tmp:
            heatmap(report["rows"], tmp, labels=labels, top=COMPACT_TOP)
        pictures["heatmap_top"] = files["heatmap_top"]
    if report.get("best_confusion"):
        files["confusion"] = out / "confusion.png"
        with outputs.atomic_path(files["confusion"]) as tmp:
            confusion_picture(
                report["best_confusion"], report.get("label_names") or [], tmp,
                title=f"{report['best_model']} on {labels.get(report['best_features'], '')}",
            )  # fmt: skip
        pictures["confusion"] = files["confusion"]
    outputs.atomic_write_text(
        files["html"], html_page(report, files["heatmap"].name, pictures=pictures)
    )
    result = {k: str(v) for k, v in files.items()}
    outputs.atomic_write_text(files["json"], json.dumps({**report, "files": result}, indent=2))
    return result


def _grid(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], np.ndarray]:
    features = list(dict.fromkeys(r["backbone"] for r in rows))
    classifiers = list(dict.fromkeys(r["classifier"] for r in rows))
    values = np.full((len(features), len(classifiers)), np.nan)
    for r in rows:
        if r["status"] == "ok" and r["accuracy"] is not None:
            values[features.index(r["backbone"]), classifiers.index(r["classifier"])] = r[
                "accuracy"
            ]
    return features, classifiers, values


COMPACT_TOP = 12  # more classifiers than this: also a heat map of the best ones


def _row_labels(report: dict[str, Any]) -> dict[str, str]:
    """Each feature source's name -> its recipe (``efficientnet-lite0@96:max``), the store's
    name added where two sources share a recipe."""
    features = report.get("features") or []
    recipes = [f.get("recipe") or f["name"] for f in features]
    labels = {}
    for f, recipe in zip(features, recipes, strict=True):
        labels[f["name"]] = (
            recipe if recipes.count(recipe) == 1 or recipe == f["name"] else
            f"{recipe} ({Path(f['name']).stem})"
        )  # fmt: skip
    return labels


def confusion_picture(
    matrix: list[list[int]], label_names: list[str], path: Path, title: str = ""
) -> None:
    """The best pair's confusion matrix (rows: true class, columns: predicted), class names on
    both axes, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(matrix)
    k = len(values)
    names = [str(n) for n in label_names] if len(label_names) == k else [str(i) for i in range(k)]
    side = max(4.0, 0.45 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        top = values.max() or 1
        for i in range(k):
            for j in range(k):
                color = "white" if values[i, j] > 0.6 * top else "black"
                ax.text(j, i, str(values[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="images")
    ax.set_title(f"Confusion matrix: {title}" if title else "Confusion matrix", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def heatmap(
    rows: list[dict[str, Any]],
    path: Path,
    labels: dict[str, str] | None = None,
    top: int | None = None,
) -> None:
    """Accuracy of every pair as a features x classifiers picture (blank: failed/timeout);
    ``labels`` names the feature rows; ``top`` keeps only the best classifiers, best first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features, classifiers, values = _grid(rows)
    if top is not None:
        best = np.nan_to_num(values, nan=-1.0).max(axis=0)
        keep = sorted(np.argsort(-best, kind="stable")[:top], key=lambda j: -best[j])
        classifiers = [classifiers[j] for j in keep]
        values = values[:, keep]
    features = [(labels or {}).get(f, f) for f in features]
    width = max(6.0, 0.45 * len(classifiers) + 3)
    height = max(2.5, 0.5 * len(features) + 2)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto"
    )
    ax.set_xticks(range(len(classifiers)), classifiers, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(features)), features, fontsize=8)
    if len(classifiers) * len(features) <= 120:
        for i in range(len(features)):
            for j in range(len(classifiers)):
                v = values[i, j]
                text = "x" if np.isnan(v) else f"{v:.2f}"
                color = (
                    "black" if not np.isnan(v) and v > 0.6 else "white"
                )  # viridis is light up high
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(
        f"The best {len(classifiers)} classifiers (held-out accuracy)"
        if top is not None
        else "Spot-check accuracy (held-out split)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_SORT_JS = """
document.querySelectorAll('th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.from(body.rows), asc = th.dataset.asc !== '1';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    table.querySelectorAll('th').forEach(function (h) { h.dataset.asc = ''; });
    th.dataset.asc = asc ? '1' : '0';
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _embedded(path: Path, alt: str) -> str:
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'title="{html.escape(Path(path).name)}" style="max-width: 100%">'
    )


def html_page(report: dict[str, Any], picture: str, pictures: dict[str, Path] | None = None) -> str:
    """The report as one self-contained page: the rows sorted by accuracy (best first), each
    labelled by its features' recipe, the heat maps and the best pair's confusion matrix
    embedded (the PNG files are written next to it too)."""
    labels = _row_labels(report)

    def cell(value: Any) -> str:
        shown = "" if value is None else str(value)
        if isinstance(value, float):
            shown = f"{value:.4f}"
        sort_value = "" if value is None else str(value)
        return f'<td data-v="{html.escape(sort_value)}">{html.escape(shown)}</td>'

    fields = ["features", *ROW_FIELDS]
    shown_as = {"backbone": "store"}  # the rows' "backbone" field is the feature source's name
    head = "".join(f"<th>{html.escape(shown_as.get(f, f))}</th>" for f in fields)
    ordered = sorted(
        report["rows"],
        key=lambda r: (r["status"] != "ok" or r["accuracy"] is None, -(r["accuracy"] or 0.0)),
    )
    body = "\n".join(
        "<tr>"
        + "".join(
            cell(labels.get(row["backbone"], row["backbone"]) if f == "features" else row.get(f))
            for f in fields
        )
        + "</tr>"
        for row in ordered
    )
    pictures = pictures or {}
    shown = (
        _embedded(pictures["heatmap"], "accuracy heat map")
        if "heatmap" in pictures
        else f'<img src="{html.escape(picture)}" alt="accuracy heat map" style="max-width: 100%">'
    )
    if "heatmap_top" in pictures:
        shown = (
            f"<h2>The best {COMPACT_TOP} classifiers</h2>\n"
            + _embedded(pictures["heatmap_top"], "heat map of the best classifiers")
            + "\n<h2>All pairs</h2>\n"
            + shown
        )
    if "confusion" in pictures:
        shown += "\n<h2>The best pair's confusion matrix</h2>\n" + _embedded(
            pictures["confusion"], "confusion matrix of the best pair"
        )
    best = (
        f"Best: <b>{html.escape(str(report['best_model']))}</b> on "
        f"<b>{html.escape(labels.get(report['best_features'], str(report['best_features'])))}"
        f"</b>, accuracy "
        f"{report['best_accuracy']:.4f}"
        if report["best_model"]
        else "No pair succeeded."
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>transferkit spot-check</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ cursor: pointer; background: #eee; }}
</style></head>
<body>
<h1>Spot-check</h1>
<p>{best}. {len(report["rows"])} pairs, best first (saved as {html.escape(picture)} too); click a
column header to sort.</p>
{shown}
<h2>Every pair</h2>
<table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<script>{_SORT_JS}</script>
</body></html>
"""
