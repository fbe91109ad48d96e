"""Run the ``transferkit`` command line with a plugin that damages the image folder once the
run has listed it (``on_extract_start``): it deletes one file and truncates another, so that a
test sees files that vanish or change between the listing and the reading, deterministically.

Usage: python faults_inputs_child.py DELETE TRUNCATE -- ARGS...
"""

from __future__ import annotations

import os
import sys
from typing import Any

from transferkit import hookimpl, plugin_manager
from transferkit.cli import main


class Vandal:
    def __init__(self, delete: str, truncate: str) -> None:
        self.delete, self.truncate = delete, truncate

    @hookimpl
    def on_extract_start(self, total: int) -> None:
        os.remove(self.delete)
        size = os.path.getsize(self.truncate)
        with open(self.truncate, "r+b") as fh:
            fh.truncate(size // 2)
        print(f"damaged 2 of {total} files", file=sys.stderr, flush=True)


def run() -> None:
    delete, truncate, sep, *args = sys.argv[1:]
    assert sep == "--", sys.argv
    pm: Any = plugin_manager.get_plugin_manager()
    pm.register(Vandal(delete, truncate), name="vandal")
    main(args)


if __name__ == "__main__":
    run()
