"""Regenerate TABLE in plugins/keras_applications.py: build every keras.applications network with
weights=None at its default input size, read the feature map shape and the parameter count, and
rewrite the block between the BEGIN/END GENERATED TABLE markers.

    .venv/bin/python docs/tools/backbone_table.py            # rewrite the table in place
    .venv/bin/python docs/tools/backbone_table.py --check    # compare, exit 1 on a difference

Building the 40 networks takes a few minutes on a CPU (no inference, only shapes and variables).
"""

from __future__ import annotations

import gc
import re
import sys
from pathlib import Path

MODULE = Path(__file__).resolve().parents[2] / "plugins" / "keras_applications.py"


def measure() -> dict[str, tuple[tuple[int, int, int], int]]:
    import keras

    from transferkit.plugins.keras_applications import NETS

    table = {}
    for name, net in NETS.items():
        size = net.input_size
        model = getattr(keras.applications, net.cls)(
            include_top=False, weights=None, input_shape=(size, size, 3)
        )
        h, w, c = (int(d) for d in model.outputs[0].shape[1:])
        table[name] = ((h, w, c), int(model.count_params()))
        print(f"{name:22s} {h}x{w}x{c} {table[name][1]:>12,d}", file=sys.stderr, flush=True)
        del model
        keras.backend.clear_session()
        gc.collect()
    return table


def render(table: dict[str, tuple[tuple[int, int, int], int]]) -> str:
    lines = ["TABLE: dict[str, tuple[tuple[int, int, int], int]] = {"]
    for name, (shape, params) in table.items():
        lines.append(f'    "{name}": ({shape}, {params}),')
    lines.append("}")
    return "\n".join(lines)


def main() -> int:
    table = measure()
    text = MODULE.read_text()
    pattern = re.compile(
        r"(# BEGIN GENERATED TABLE[^\n]*\n#[^\n]*\n)(.*?)(\n# END GENERATED TABLE)", re.S
    )
    new = pattern.sub(lambda m: m.group(1) + render(table) + m.group(3), text)
    if "--check" in sys.argv:
        same = new == text
        print("table up to date" if same else "table differs from the networks")
        return 0 if same else 1
    MODULE.write_text(new)
    print(f"wrote {len(table)} rows into {MODULE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
