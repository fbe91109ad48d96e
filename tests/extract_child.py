"""Run one extraction with the tiny backbone in its own process, printing the rows on disk after
each batch and pausing a little, so that a test can SIGKILL it mid-way.

Usage: python extract_child.py IMAGES OUT PAUSE_SECONDS
"""

from __future__ import annotations

import sys
import time
from typing import Any

import tiny_backbone

import transferkit
from transferkit import hookimpl, plugin_manager


class Reporter:
    def __init__(self, pause: float) -> None:
        self.pause = pause

    @hookimpl
    def on_extract_batch(self, rows_written: int, skipped: int) -> None:
        print(f"rows {rows_written} skipped {skipped}", flush=True)
        time.sleep(self.pause)

    @hookimpl
    def on_extract_end(self, summary: Any) -> None:
        print(f"done {summary['rows']}", flush=True)


def main() -> None:
    images, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    pm = plugin_manager.get_plugin_manager()
    pm.register(tiny_backbone, name="tiny-backbone")
    pm.register(Reporter(pause), name="reporter")
    transferkit.extract(
        images, backbone="tiny-cnn", out=out, batch_size=4, buffer_rows=4, progress=False
    )


if __name__ == "__main__":
    main()
