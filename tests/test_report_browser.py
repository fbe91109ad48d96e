"""The spot-check ``report.html`` in a real headless Chromium: rows best first and labelled by
their features' recipe, every picture embedded in the page (heat map, the compact heat map of the
best classifiers, the best pair's confusion matrix with class names). Skipped, with the reason,
where no Chromium is installed (``apt-get install chromium``), unless
``TRANSFERKIT_REQUIRE_BROWSER=1`` says a browser must be there (CI's ``.ci/run`` installs it and
sets it): then a missing Chromium fails the test."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit import api

CLASSIFIERS = [
    "nearest-centroid", "ridge-0.001", "ridge-0.01", "ridge-1", "ridge-10", "knn-3", "knn-5",
    "knn-7", "knn-9", "knn-11", "knn-13", "gaussian-nb", "decision-tree", "perceptron",
]  # fmt: skip
RECIPES = {
    "lite0-max.h5": {"backbone": "efficientnet-lite0", "input_size": [96, 96], "pooling": "max"},
    "lite0-avg.zarr": {"backbone": "efficientnet-lite0", "input_size": [64, 64], "pooling": "avg"},
}


REQUIRE_BROWSER_ENV = "TRANSFERKIT_REQUIRE_BROWSER"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> str:
    """The Chromium to run; a skip where none is installed, a failure where one is required
    (module-scoped, so that it comes before the report is made)."""
    found = chromium()
    if found is not None:
        return found
    reason = "no Chromium installed (apt-get install chromium)"
    if os.environ.get(REQUIRE_BROWSER_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason}, and {REQUIRE_BROWSER_ENV} says a browser is required")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_train import write_digits

    folder = tmp_path_factory.mktemp("browser")
    stores = [str(write_digits(folder / n, rows=500, metadata=m)) for n, m in RECIPES.items()]
    api.spotcheck(stores, classifiers=CLASSIFIERS, jobs=2, out=folder / "report", progress=False)
    return folder / "report"


def test_the_page_is_self_contained_sorted_and_labelled(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)[1:]
    assert len(rows) == 2 * len(CLASSIFIERS)
    cells = [re.findall(r'<td data-v="([^"]*)"', r) for r in rows]
    labels = {html.unescape(c[0]) for c in cells}
    assert labels == {"efficientnet-lite0@96:max", "efficientnet-lite0@64:avg"}
    accuracy_column = ["features", "backbone", "classifier", "status", "accuracy"].index("accuracy")
    accuracies = [float(c[accuracy_column]) for c in cells]
    assert accuracies == sorted(accuracies, reverse=True)
    for name in ("heatmap.png", "heatmap-top.png", "confusion.png"):
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.process
def test_the_page_renders_in_headless_chromium(
    browser: str, report_dir: Path, tmp_path: Path
) -> None:
    shot = tmp_path / "report.png"
    common = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,2600",
    ]  # fmt: skip
    url = (report_dir / "report.html").as_uri()
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "efficientnet-lite0@96:max" in dom.stdout and "confusion matrix" in dom.stdout
    taken = subprocess.run(
        [*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    shutil.copy(shot, report_dir / "screenshot.png")  # kept with the report, to look at
    with Image.open(shot) as picture:
        pixels = np.asarray(picture.convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (2600, 1200)
    # the embedded pictures were decoded: the heat maps' colours (viridis) and the confusion
    # matrix's blues are on the screen, not only text on white
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    colourful = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 80
    bluish = (b > r + 60) & (b > g + 10)
    assert colourful.mean() > 0.02 and bluish.mean() > 0.002
