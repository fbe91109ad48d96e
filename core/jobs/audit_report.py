"""The audit's report files: ``audit.json``, ``audit.csv`` and a self-contained ``audit.html``.

:func:`write_report` writes each file whole (a temporary file renamed into place) into a folder
marked as an audit report (:func:`check_report_folder` refuses any other non-empty folder, and an
input). The page shows every finding with thumbnails of its images, read from their paths and
downscaled into the page as JPEG; an image that cannot be read is a grey placeholder.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from .. import outputs

REPORT_KIND = "audit-report"
SECTIONS = ("label_issues", "near_duplicates", "leakage", "outliers")
CSV_FIELDS = ("finding", "rank", "path", "other_path", "given", "suggested", "score", "exact",
              "store")  # fmt: skip
THUMBNAIL = 96  # pixels of a thumbnail's longer side
PAGE_ROWS = 200  # findings of each kind shown on the page (all are in the JSON and the CSV)


def check_report_folder(out: Path, inputs: list[str]) -> None:
    """An audit folder may be new, empty or an earlier audit (its marker), never an input."""
    outputs.check_outside_inputs(out, inputs, "audit folder")
    outputs.check_folder(out, REPORT_KIND, what="audit folder")
    outputs.check_writable(out)


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per finding: its kind, rank (1 is the worst), paths and score."""
    rows = []
    for section in SECTIONS:
        for rank, f in enumerate(report[section], 1):
            rows.append(
                {
                    "finding": section,
                    "rank": rank,
                    "path": f.get("path", f.get("test_path")),
                    "other_path": f.get("other_path", f.get("train_path", "")),
                    "given": f.get("given", ""),
                    "suggested": f.get("suggested", ""),
                    "score": f.get("score", f.get("similarity")),
                    "exact": f.get("exact", ""),
                    "store": f.get("store", ""),
                }
            )
    return rows


def write_report(report: dict[str, Any], out: Path, inputs: list[str]) -> dict[str, str]:
    """audit.json, audit.csv and audit.html under ``out``; returns their paths."""
    check_report_folder(out, inputs)
    page = html_page(report)  # made (thumbnails read) before anything is written
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(CSV_FIELDS))
    writer.writeheader()
    writer.writerows(csv_rows(report))
    files = {"json": out / "audit.json", "csv": out / "audit.csv", "html": out / "audit.html"}
    outputs.mark_folder(out, REPORT_KIND)
    outputs.atomic_write_text(files["csv"], table.getvalue())
    outputs.atomic_write_text(files["html"], page)
    named = {k: str(v) for k, v in files.items()}
    whole = {**report, "files": named}
    outputs.atomic_write_text(files["json"], json.dumps(whole, indent=2, default=str))
    return named


def thumbnail(path: Any) -> str:
    """An ``<img>`` of the image at ``path`` downscaled to :data:`THUMBNAIL` pixels, or a
    placeholder when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=85)
    except Exception:  # noqa: BLE001 - missing, unreadable or not an image: a placeholder
        return f'<span class="missing" title="{html.escape(str(path))}">image not readable</span>'
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<img class="thumb" src="data:image/jpeg;base64,{data}" '
        f'alt="{html.escape(str(path))}" title="{html.escape(str(path))}">'
    )


def _cell(value: Any) -> str:
    shown = f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)
    return f"<td>{html.escape(shown)}</td>"


_COLUMNS = {
    "label_issues": ("image", "path", "given", "suggested", "score"),
    "near_duplicates": (
        "image",
        "other image",
        "store",
        "path",
        "other_path",
        "similarity",
        "exact",
    ),  # fmt: skip
    "leakage": ("test image", "training image", "test_path", "train_path", "similarity", "exact"),
    "outliers": ("image", "path", "given", "score"),
}
_IMAGES = {
    "image": "path",
    "other image": "other_path",
    "test image": "test_path",
    "training image": "train_path",
}
_TITLES = {
    "label_issues": "Label issues: the given class is contradicted by held-out probabilities",
    "near_duplicates": "Near-duplicates inside one store (training, or test)",
    "leakage": "Leakage: test images with a near-duplicate in the training store",
    "outliers": "Outliers: far from every class (k-NN distance)",
}


def html_page(report: dict[str, Any]) -> str:
    """The report as one self-contained page: a summary and each kind of finding, worst first,
    with thumbnails embedded."""
    summary = report["summary"]
    parts = []
    for section in SECTIONS:
        found = report[section]
        columns = _COLUMNS[section]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "\n".join(
            f'<tr class="{section}">'
            + "".join(
                f"<td>{thumbnail(f[_IMAGES[c]])}</td>" if c in _IMAGES else _cell(f.get(c))
                for c in columns
            )
            + "</tr>"
            for f in found[:PAGE_ROWS]
        )
        more = (
            f"<p>The first {PAGE_ROWS} of {len(found)}; all are in audit.json and audit.csv.</p>"
            if len(found) > PAGE_ROWS
            else ""
        )
        parts.append(
            f'<h2 id="{section}">{html.escape(_TITLES[section])} ({len(found)})</h2>\n'
            + (
                f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>{more}"
                if found
                else "<p>None found.</p>"
            )
        )
    balance = ", ".join(f"{html.escape(k)} {v}" for k, v in summary["classes"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>transferkit audit</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #eee; }}
img.thumb {{ height: {THUMBNAIL}px; max-width: {2 * THUMBNAIL}px; image-rendering: pixelated; }}
.missing {{ display: inline-block; width: {THUMBNAIL}px; height: {THUMBNAIL // 2}px;
  background: #999; color: #fff; font-size: 0.7em; text-align: center; }}
</style></head>
<body>
<h1>Audit of {html.escape(str(report["store"]))}</h1>
<p>{summary["rows"]} rows, {len(summary["classes"])} classes ({balance});
out-of-fold accuracy {summary["out_of_fold_accuracy"]:.4f} ({html.escape(summary["classifier"])}).
{summary["label_issues"]} label issues, {summary["near_duplicates"]} near-duplicate pairs
({summary["exact_duplicates"]} exact), {summary["leakage"]} leaked test rows,
{summary["outliers"]} outliers.</p>
{chr(10).join(parts)}
</body></html>
"""
